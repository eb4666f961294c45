"""``lora-audit inspect --base`` end to end: JSON schema, table, options, errors, streams."""

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

runner = CliRunner()
SHAPES = {"q_proj": (24, 16), "up_proj": (40, 16)}


def schema() -> dict[str, object]:
    text = (resources.files("lora_audit") / "report" / "schema" / "inspect.schema.json").read_text(
        "utf-8"
    )
    return json.loads(text)  # type: ignore[no-any-return]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A PEFT adapter on ``model.layers.{0,1}.{q,up}_proj`` and a base that has those weights."""
    layers, weights = [], {}
    gen = torch.Generator().manual_seed(0)
    for i in range(2):
        for name, (out, inp) in SHAPES.items():
            b, a = planted_factors(
                out=out, inp=inp, rank=4, spectrum=np.array([3.0, 1.0, 0.2]), seed=i
            )
            layers.append(FakeLayer(f"model.layers.{i}.{name}", b, a))
            weights[f"model.layers.{i}.{name}.weight"] = torch.randn(out, inp, generator=gen)
            weights[f"model.layers.{i}.{name}.bias"] = torch.zeros(out)
    adapter = write_peft(tmp_path / "adapter", FakeAdapter(layers, {"r": 4}))
    base = tmp_path / "base"
    base.mkdir()
    save_file(weights, str(base / "model.safetensors"))
    return adapter, base


def inspect(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["inspect", "--device", "cpu", *args])
    return result.exit_code, result.stdout, result.stderr


def test_json_validates_and_carries_the_base_results(pair: tuple[Path, Path]) -> None:
    adapter, base = pair
    code, out, err = inspect(str(adapter), "--base", str(base), "-f", "json")
    assert code == 0, err
    report = json.loads(out)
    jsonschema.validate(report, schema())
    summary = report["summary"]["base"]
    assert summary["layers_matched"] == 4 and summary["converged"]
    assert summary["k"] is None and summary["tolerance"] == 1e-8
    assert "top_k_alignment" in summary["iterative"]
    assert "update_spectral_norm" in summary["exact"]
    for layer in report["layers"]:
        b = layer["base"]
        assert b["key"] == layer["name"] + ".weight" and b["update"] == "lora"
        assert b["k"] == layer["energy_rank"]
        assert len(b["left_angles"]) == b["k"]
        assert b["relative_frobenius"] == pytest.approx(
            b["update_frobenius_norm"] / b["weight_frobenius_norm"]
        )
    assert err == ""


def test_without_base_the_fields_are_null(pair: tuple[Path, Path]) -> None:
    code, out, _ = inspect(str(pair[0]), "-f", "json")
    assert code == 0
    report = json.loads(out)
    jsonschema.validate(report, schema())
    assert report["summary"]["base"] is None
    assert all(layer["base"] is None for layer in report["layers"])


def test_table_shows_the_base_section_in_100_columns(
    pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    code, out, err = inspect(str(pair[0]), "--base", str(pair[1]))
    assert code == 0, err
    assert "against the base" in out and "sr W+ΔW" in out and "iterative" in out
    assert "Krylov" in out and "exact" in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_base_k_option(pair: tuple[Path, Path]) -> None:
    code, out, err = inspect(str(pair[0]), "--base", str(pair[1]), "--base-k", "2", "-f", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["summary"]["base"]["k"] == 2
    assert all(len(layer["base"]["right_angles"]) == 2 for layer in report["layers"])


def test_unmatched_layers_fail_in_one_line_unless_partial(pair: tuple[Path, Path]) -> None:
    adapter, base = pair
    from safetensors.torch import load_file

    weights = load_file(str(base / "model.safetensors"))
    del weights["model.layers.1.up_proj.weight"]
    save_file(weights, str(base / "model.safetensors"))
    code, out, err = inspect(str(adapter), "--base", str(base))
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and "model.layers.1.up_proj" in err and "--base-partial" in err
    code, out, err = inspect(str(adapter), "--base", str(base), "--base-partial", "-f", "json")
    assert code == 0
    assert "warning" in err and "model.layers.1.up_proj" in err
    report = json.loads(out)
    assert report["summary"]["base"]["unmatched_layers"] == ["model.layers.1.up_proj"]
    bases = {layer["name"]: layer["base"] for layer in report["layers"]}
    assert bases["model.layers.1.up_proj"] is None and bases["model.layers.0.up_proj"] is not None
    assert any("no matching base weight" in w for w in report["warnings"])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--base-k", "2"], 2, "--base-k needs --base"),
        (["--base-partial"], 2, "needs --base"),
        (["--base", "BASE", "--base-k", "0"], 2, "must be at least 1"),
        (["--base", "missing-dir"], 3, "no such file or directory"),
    ],
)
def test_option_errors(pair: tuple[Path, Path], args: list[str], code: int, message: str) -> None:
    args = [str(pair[1]) if a == "BASE" else a for a in args]
    got, out, err = inspect(str(pair[0]), *args)
    assert got == code and out == "" and message in err


def test_nan_in_the_base_is_an_input_error(pair: tuple[Path, Path]) -> None:
    adapter, base = pair
    from safetensors.torch import load_file

    weights = load_file(str(base / "model.safetensors"))
    weights["model.layers.0.q_proj.weight"][3, 2] = float("nan")
    save_file(weights, str(base / "model.safetensors"))
    code, _, err = inspect(str(adapter), "--base", str(base))
    assert code == 3 and "NaN or Inf" in err and "model.layers.0.q_proj.weight" in err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(pair: tuple[Path, Path]) -> None:
    reports = {}
    for device in ("cpu", "cuda"):
        result = runner.invoke(
            app, ["inspect", str(pair[0]), "--base", str(pair[1]), "--device", device, "-f", "json"]
        )
        assert result.exit_code == 0, result.stderr
        reports[device] = json.loads(result.stdout)
    for cpu, gpu in zip(reports["cpu"]["layers"], reports["cuda"]["layers"], strict=True):
        for key, value in cpu["base"].items():
            if isinstance(value, float):
                assert gpu["base"][key] == pytest.approx(value, rel=1e-7, abs=1e-12), key


def test_compress_dora_needs_base_or_allow_dora(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    from safetensors.torch import load_file

    _, base = pair
    layers, extra = [], {}
    for i in range(2):
        name = f"model.layers.{i}.q_proj"
        b, a = planted_factors(out=24, inp=16, rank=4, spectrum=np.array([3.0, 1.0, 0.2]), seed=i)
        layers.append(FakeLayer(name, b, a))
        extra[f"base_model.model.{name}.lora_magnitude_vector"] = torch.rand(24) + 0.5
    adapter = write_peft(tmp_path / "dora", FakeAdapter(layers, {"r": 4, "use_dora": True}, extra))
    result = runner.invoke(
        app, ["compress", str(adapter), "-o", str(tmp_path / "x"), "--rank", "1"]
    )
    assert result.exit_code == 2 and "DoRA" in result.stderr
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "compress",
            str(adapter),
            "-o",
            str(out),
            "--rank",
            "1",
            "--base",
            str(base),
            "-f",
            "json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert all(layer["new_rank"] == 1 for layer in report["layers"])
    written = load_file(str(out / "adapter_model.safetensors"))
    for key, before in extra.items():
        assert written[key].shape == before.shape and not torch.equal(written[key], before)
    result = runner.invoke(
        app, ["compress", str(pair[0]), "--dry-run", "--rank", "1", "--base", str(base)]
    )
    assert result.exit_code == 0 and "no DoRA layers" in result.stderr


def test_markdown_carries_the_base_results(pair: tuple[Path, Path]) -> None:
    adapter, base = pair
    code, out, err = inspect(str(adapter), "--base", str(base), "-f", "markdown")
    assert code == 0, err
    report = json.loads(inspect(str(adapter), "--base", str(base), "-f", "json")[1])
    assert "### Against the base" in out
    assert "- matched: 4 layers" in out
    rows = [line for line in out.splitlines() if line.startswith("| `model.layers.")]
    assert len(rows) == 8  # 4 in the spectral table, 4 in the base table
    base_rows = {line.split(" | ")[0].strip("| `"): line for line in rows[4:]}
    for layer in report["layers"]:
        cells = base_rows[layer["name"]].strip("| ").split(" | ")
        assert cells[1] == str(layer["base"]["k"])
        assert float(cells[5]) == pytest.approx(layer["base"]["relative_frobenius"], abs=5e-4)
        assert float(cells[7]) == pytest.approx(layer["base"]["top_k_alignment"], abs=5e-4)
    _, plain, _ = inspect(str(adapter), "-f", "markdown")
    assert "Against the base" not in plain


def test_the_python_api_gives_the_cli_report(pair: tuple[Path, Path]) -> None:
    import lora_audit

    adapter, base = pair
    code, out, _ = inspect(str(adapter), "--base", str(base), "--format", "json", "--device", "cpu")
    assert code == 0
    report = lora_audit.inspect(adapter, base=base, device="cpu").to_dict()
    cli = json.loads(out)
    for data in (report, cli):
        data.pop("warnings", None)
        data["settings"].pop("settings_file", None)
    assert report["layers"][0]["base"] is not None
    assert report == cli
