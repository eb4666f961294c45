"""``lora-audit inspect --base BASE --fuse-into SCHEMES`` end to end: JSON, table, errors."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from factories import FakeAdapter, FakeLayer, planted_factors, write_peft
from safetensors.torch import save_file
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.errors import ExitCode, UsageError
from lora_audit.report.common import SCHEMA_VERSION

runner = CliRunner()


def schema() -> dict[str, object]:
    folder = resources.files("lora_audit") / "report" / "schema"
    return json.loads((folder / "inspect.schema.json").read_text("utf-8"))  # type: ignore[no-any-return]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny adapter whose update is above Q8_0's step and below Q4_0's, and its base."""
    gen = torch.Generator().manual_seed(0)
    b, a = planted_factors(out=64, inp=64, rank=2, spectrum=np.array([0.2, 0.15]), seed=0)
    adapter = write_peft(
        tmp_path / "adapter", FakeAdapter([FakeLayer("model.layers.0.q_proj", b, a)], {"r": 2})
    )
    base = tmp_path / "base"
    base.mkdir()
    save_file(
        {"model.layers.0.q_proj.weight": torch.randn(64, 64, generator=gen)},
        str(base / "model.safetensors"),
    )
    return adapter, base


def inspect(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["inspect", "--device", "cpu", *args])
    return result.exit_code, result.stdout, result.stderr


def test_json_validates_and_carries_fuse_survival(pair: tuple[Path, Path]) -> None:
    adapter, base = pair
    code, out, err = inspect(
        str(adapter), "--base", str(base), "--fuse-into", "q4_0,q8_0", "-f", "json"
    )
    assert code == 0, err
    report = json.loads(out)
    jsonschema.validate(report, schema())
    assert report["schema_version"] == SCHEMA_VERSION
    fuse = report["summary"]["fuse"]
    assert [s["scheme"] for s in fuse["schemes"]] == ["q8_0", "q4_0"]
    q8, q4 = fuse["schemes"]
    assert q4["requantized_kept"] < 0.5 < q8["requantized_kept"]
    assert q4["below_half_step"] > 0.5 > q8["below_half_step"]
    assert "serve it unfused" in fuse["advice"]
    (layer,) = report["layers"]
    assert [f["scheme"] for f in layer["fuse"]] == ["q8_0", "q4_0"]


def test_table_shows_the_advice(pair: tuple[Path, Path]) -> None:
    adapter, base = pair
    code, out, err = inspect(str(adapter), "--base", str(base), "--fuse-into", "q4_0")
    assert code == 0, err
    assert "fuse q4_0" in out and "fuse advice" in out and "serve it unfused" in out


def test_without_fuse_into_the_json_has_no_fuse_summary(pair: tuple[Path, Path]) -> None:
    adapter, base = pair
    code, out, _ = inspect(str(adapter), "--base", str(base), "-f", "json")
    report = json.loads(out)
    assert code == 0 and report["summary"]["fuse"] is None and report["layers"][0]["fuse"] == []


def test_fuse_into_needs_base_and_a_known_scheme(pair: tuple[Path, Path]) -> None:
    adapter, base = pair
    code, _, err = inspect(str(adapter), "--fuse-into", "q4_0")
    assert code == ExitCode.USAGE and "--fuse-into needs --base" in err
    code, _, err = inspect(str(adapter), "--base", str(base), "--fuse-into", "q3_k")
    assert code == ExitCode.USAGE and "q3_k" in err


def test_python_api_gives_the_same_numbers(pair: tuple[Path, Path]) -> None:
    import lora_audit

    adapter, base = pair
    report = lora_audit.inspect(adapter, device="cpu", base=base, fuse_into=["q4_0"])
    code, out, _ = inspect(str(adapter), "--base", str(base), "--fuse-into", "q4_0", "-f", "json")
    assert code == 0 and report.summary.fuse is not None
    (scheme,) = report.summary.fuse.schemes
    assert (
        scheme.requantized_kept
        == json.loads(out)["summary"]["fuse"]["schemes"][0]["requantized_kept"]
    )
    with pytest.raises(UsageError, match="fuse_into needs base"):
        lora_audit.inspect(adapter, fuse_into="q4_0")
