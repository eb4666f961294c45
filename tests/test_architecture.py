"""The layering rules, checked: math is free of CLI/rendering/format imports; --help is light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lora_audit"
PURE = ["spectral.py", "metrics.py", "policy.py", "adapter.py"]
FORBIDDEN = (
    "typer",
    "rich",
    "click",
    "safetensors",
    "lora_audit.formats",
    "lora_audit.render",
    "lora_audit.cli",
)


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("name", PURE)
def test_math_and_model_import_no_cli_render_or_format(name: str) -> None:
    bad = {m for m in imported_modules(SRC / name) if m.startswith(FORBIDDEN)}
    assert not bad, f"{name} imports {bad}"


def test_renderers_do_not_compute() -> None:
    for path in (SRC / "render").glob("*.py"):
        bad = {
            m
            for m in imported_modules(path)
            if m.startswith(
                (
                    "torch",
                    "numpy",
                    "lora_audit.engine",
                    "lora_audit.spectral",
                    "lora_audit.metrics",
                    "lora_audit.formats",
                )
            )
        }
        assert not bad, f"{path.name} imports {bad}"


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from lora_audit.cli import app; "
        "from typer.testing import CliRunner; CliRunner().invoke(app, ['--help']); "
        "print(sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
