"""The repository's ``.pre-commit-hooks.yaml`` runs ``lora-audit check`` on changed adapters."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_hook_definition() -> None:
    yaml = pytest.importorskip("yaml")
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    (hook,) = hooks
    assert hook["id"] == "lora-audit-check"
    assert hook["entry"] == "lora-audit check"
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is True
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert hook["entry"].split()[0] in scripts
    files = re.compile(hook["files"])
    for path in ("adapter_model.safetensors", "runs/a/adapter_model.safetensors"):
        assert files.search(path), path
    for path in (
        "model.safetensors",
        "adapter_model.safetensors.bak",
        "x_adapter_model.safetensors",
    ):
        assert not files.search(path), path
