"""PEFT's save_pretrained of several adapters: the default at ``d/``, others in ``d/<name>/``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_proj import TinyProj, proj_sigma
from typer.testing import CliRunner

import lora_audit
from lora_audit.cli import app
from lora_audit.errors import InputError
from lora_audit.formats.discovery import discover, named_adapters

peft = pytest.importorskip("peft")


def _two_adapters(out: Path) -> Path:
    torch.manual_seed(0)
    first = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["proj"], init_lora_weights=False)
    second = peft.LoraConfig(r=3, lora_alpha=3, target_modules=["proj"], init_lora_weights=False)
    model = peft.get_peft_model(TinyProj(), first)
    model.add_adapter("second", second)
    model.save_pretrained(out)
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "second" / "adapter_model.safetensors").is_file()  # PEFT's own layout
    return out


def test_discovery_finds_both(tmp_path: Path) -> None:
    d = _two_adapters(tmp_path / "run")
    assert named_adapters(d) == [d / "second"]
    found = discover([d])
    assert [f.path for f in found.found] == [d, d / "second"] and found.searched
    below = discover([tmp_path])  # found while searching a parent, too (tmp_path reads as run)
    assert len(below.found) == 2 and below.found[1].path == d / "second"


def test_inspect_and_check_audit_both(tmp_path: Path) -> None:
    """Before: one report (the default adapter), not a word about d/second."""
    d = _two_adapters(tmp_path / "run")
    result = CliRunner().invoke(app, ["inspect", str(d), "--format", "json", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    reports = {Path(a["adapter"]["path"]): a for a in data["adapters"]}
    assert set(reports) == {d, d / "second"}
    for path, scale in ((d, 2.0), (d / "second", 1.0)):
        got = np.array(reports[path]["layers"][0]["singular_values"])
        want = proj_sigma(path, scale)[: len(got)]
        assert np.abs(got - want).max() <= 1e-12 * want[0]
    check = CliRunner().invoke(app, ["check", str(d), "--format", "json", "--device", "cpu"])
    assert check.exit_code == 0, check.stderr
    assert len(json.loads(check.stdout)["adapters"]) == 2


def test_a_single_adapter_command_names_what_it_skipped(tmp_path: Path) -> None:
    d = _two_adapters(tmp_path / "run")
    result = CliRunner().invoke(app, ["compress", str(d), "--rank", "1", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert f"{d / 'second'}: another adapter saved inside {d}" in result.stderr


def test_the_api_names_both(tmp_path: Path) -> None:
    d = _two_adapters(tmp_path / "run")
    with pytest.raises(InputError, match="2 adapters below it") as info:
        lora_audit.inspect(d)
    assert str(d / "second") in str(info.value)
    assert len(lora_audit.inspect_many([d], device="cpu").adapters) == 2
