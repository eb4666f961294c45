"""``lora-audit inspect --base --intruders`` end to end: JSON schema, table, options, errors."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from factories import FakeAdapter, FakeLayer, write_peft
from safetensors.torch import save_file
from typer.testing import CliRunner

from lora_audit.cli import app

runner = CliRunner()


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Two layers on a base: ``q_proj`` gets a planted intruder, ``v_proj`` a tiny update."""
    monkeypatch.setenv("LORA_AUDIT_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    layers, weights = [], {}
    for name, size in (("q_proj", 1e-4), ("v_proj", 1e-4)):
        w = rng.standard_normal((24, 16))
        b = rng.standard_normal((24, 2)) * size
        a = rng.standard_normal((2, 16))
        if name == "q_proj":  # ΔW = 50·u·vᵀ, u spread over W's 16 singular directions (|cos| 1/4)
            u_w = np.linalg.svd(w, full_matrices=False)[0]
            b[:, 0] = 50 * u_w.sum(axis=1) / 4
            a[0] = np.eye(16)[0]
        layers.append(FakeLayer(f"model.layers.0.{name}", b, a))
        weights[f"model.layers.0.{name}.weight"] = torch.from_numpy(w).float()
    adapter = write_peft(tmp_path / "adapter", FakeAdapter(layers, {"r": 2, "lora_alpha": 2}))
    base = tmp_path / "base"
    base.mkdir()
    save_file(weights, str(base / "model.safetensors"))
    return adapter, base


def schema() -> dict[str, object]:
    folder = resources.files("lora_audit") / "report" / "schema"
    return json.loads((folder / "inspect.schema.json").read_text("utf-8"))  # type: ignore[no-any-return]


def inspect(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["inspect", "--device", "cpu", *args])
    return result.exit_code, result.stdout, result.stderr


def test_json_validates_and_counts_the_planted_intruder(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    adapter, base = pair
    code, out, err = inspect(str(adapter), "--base", str(base), "--intruders", "-f", "json")
    assert code == 0, err
    report = json.loads(out)
    jsonschema.validate(report, schema())
    assert tuple(map(int, report["schema_version"].split("."))) >= (2, 5)  # intruders: 2.5
    by_name = {x["name"]: x["base"]["intruders"] for x in report["layers"]}
    assert by_name["model.layers.0.q_proj"]["indices"][:1] == [0]
    assert by_name["model.layers.0.v_proj"]["count"] == 0
    summary = report["summary"]["base"]["intruders"]
    assert summary["top"] == 10 and summary["epsilon"] == 0.5
    assert summary["layers_examined"] == 2 and summary["layers_with_intruders"] == 1
    assert summary["max_layer"] == "model.layers.0.q_proj"
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2


def test_the_table_shows_the_column_and_the_summary(pair: tuple[Path, Path]) -> None:
    adapter, base = pair
    args = ("--intruders", "--intruder-top", "3", "--intruder-epsilon", "0.4")
    code, out, err = inspect(str(adapter), "--base", str(base), *args)
    assert code == 0, err
    assert "intr" in out and "top 3 singular vectors" in out and "< 0.4" in out
    code, out, err = inspect(str(adapter), "--base", str(base), *args, "-f", "markdown")
    assert code == 0, err
    assert "| intruders |" in out and "- intruders: 1 in 1 of 2 layers" in out
    code, out, _ = inspect(str(adapter), "--base", str(base), "-f", "json")
    assert code == 0 and json.loads(out)["summary"]["base"]["intruders"] is None


def test_a_malformed_cache_bound_is_a_usage_error(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter, base = pair
    monkeypatch.setenv("LORA_AUDIT_CACHE_MAX_BYTES", "16G")
    code, _, err = inspect(str(adapter), "--base", str(base), "--intruders")
    assert code == 2 and "LORA_AUDIT_CACHE_MAX_BYTES" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--intruders"], "--intruders needs --base"),
        (["--intruder-top", "5"], "--intruder-top needs --intruders"),
        (["--BASE", "--intruders", "--intruder-top", "0"], "--intruder-top"),
        (["--BASE", "--intruders", "--intruder-epsilon", "2"], "--intruder-epsilon"),
        (["--BASE", "--intruders", "--intruder-layers", "(a+)+$"], "--intruder-layers"),
    ],
)
def test_bad_options_are_usage_errors(
    pair: tuple[Path, Path], args: list[str], message: str
) -> None:
    adapter, base = pair
    args = [x for y in args for x in (["--base", str(base)] if y == "--BASE" else [y])]
    code, _, err = inspect(str(adapter), *args)
    assert code == 2 and message in err
