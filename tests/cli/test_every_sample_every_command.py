"""Every command on every bundled sample adapter, checked against dense float64 references.

This module imports neither torch nor any library that needs it, so it runs in the default
(torch-free) install too: CI runs it in both environments.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES, sample_adapter_dirs, sample_sd_files
from typer.testing import CliRunner

from lora_audit.adapter import LayerKind
from lora_audit.cli import app
from lora_audit.formats import load_adapter

runner = CliRunner()

SAMPLE_PATHS = [*sample_adapter_dirs(), *sample_sd_files()]
IDS = [p.name for p in SAMPLE_PATHS]


def dense_sigmas(path: Path) -> dict[str, np.ndarray]:
    """σ of every layer's ``scale·B·A`` from numpy's dense float64 SVD (test only)."""
    adapter = load_adapter(path)
    out = {}
    for layer in adapter.layers:
        b, a = adapter.load_factors(layer)
        delta = layer.scale * (b @ a)
        if layer.kind is LayerKind.EMBEDDING:
            delta = delta.T
        out[layer.name] = np.linalg.svd(delta, compute_uv=False)
    return out


def run_json(args: list[str]) -> dict:  # type: ignore[type-arg]
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 1), result.stderr
    return json.loads(result.stdout)


def test_the_samples_are_there() -> None:
    assert len(sample_adapter_dirs()) >= 4 and len(sample_sd_files()) >= 5


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=IDS)
def test_inspect_matches_the_dense_reference(path: Path) -> None:
    report = run_json(["inspect", str(path), "--format", "json", "--device", "cpu"])
    reference = dense_sigmas(path)
    assert {layer["name"] for layer in report["layers"]} == set(reference)
    for layer in report["layers"]:
        got = np.array(layer["singular_values"])
        ref = reference[layer["name"]][: got.size]
        top = max(float(ref[0]) if ref.size else 0.0, 1e-300)
        np.testing.assert_allclose(got[: ref.size], ref, rtol=0, atol=1e-6 * top)


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=IDS)
def test_check_table_and_json(path: Path) -> None:
    table = runner.invoke(app, ["check", str(path)])
    assert table.exit_code in (0, 1), table.stderr
    report = run_json(["check", str(path), "--format", "json"])
    assert len(report["adapters"]) == 1
    assert table.exit_code == (1 if report["status"] == "fail" else 0)


def energy_k(sigma: np.ndarray, energy: float) -> int:
    """The smallest k whose top-k singular values hold ``energy`` of ``Σσ²`` (test only)."""
    cumulative = np.cumsum(sigma**2) / float(np.sum(sigma**2))
    return int(np.searchsorted(cumulative, energy - 1e-12, side="left")) + 1


def numerical_rank(sigma: np.ndarray) -> int:
    return int((sigma > 1e-6 * max(float(sigma[0]), 1e-300)).sum())


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=IDS)
def test_compress_writes_the_optimal_truncation(path: Path, tmp_path: Path) -> None:
    """Every layer is written; each truncated one at the energy rank of --energy, top σ kept."""
    out = tmp_path / ("out" if path.is_dir() else "out.safetensors")
    dora = ["--allow-dora"] if "dora" in path.name else []  # B·A truncated, magnitudes kept
    args = ["compress", str(path), "-o", str(out), "--energy", "0.9", "-f", "json", *dora]
    result = runner.invoke(app, args)
    if result.exit_code == 3 and "cannot be compressed" in result.stderr:
        pytest.skip(result.stderr.strip())  # a structure compress refuses by name
    assert result.exit_code == 0, result.stderr
    before, after = dense_sigmas(path), dense_sigmas(out)
    assert set(after) == set(before)
    report = {layer["name"]: layer for layer in json.loads(result.stdout)["layers"]}
    assert set(report) == set(before)
    written = {layer.name: layer.rank for layer in load_adapter(out).layers}
    rtol = 2e-2 if "bf16" in path.name else 1e-4
    for name, sigma in before.items():
        layer = report[name]
        k = min(energy_k(sigma, 0.9), layer["rank"], *layer["shape"])
        smaller = k < layer["rank"] and k * sum(layer["shape"]) < layer["params"]
        assert layer["action"] == ("truncated" if smaller else "kept"), name
        if not smaller:  # tensors unchanged: the whole spectrum is the original's
            np.testing.assert_allclose(after[name], sigma, rtol=0, atol=1e-6 * sigma[0])
            continue
        assert layer["new_rank"] == written[name] == numerical_rank(after[name]) == k, name
        np.testing.assert_allclose(after[name][:k], sigma[:k], rtol=rtol)


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=IDS)
def test_compare_with_itself_is_zero_difference(path: Path) -> None:
    report = run_json(["compare", str(path), str(path), "--format", "json"])
    assert report["summary"]["matched"] == len(dense_sigmas(path))
    assert report["summary"]["relative_difference"] in (0.0, None) or (
        report["summary"]["relative_difference"] < 1e-12
    )


def stable_rank(sigma: np.ndarray) -> float:
    return float(np.sum(sigma**2) / sigma[0] ** 2)


def test_trend_over_the_checkpoint_series() -> None:
    """Every checkpoint in step order, every layer's series equal to the dense reference."""
    run = SAMPLES / "minilm-run"
    report = run_json(["trend", str(run), "--format", "json"])
    folders = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [c["step"] for c in report["checkpoints"]] == [int(p.name[11:]) for p in folders]
    dense = [dense_sigmas(p) for p in folders]
    assert {layer["name"] for layer in report["layers"]} == set(dense[0])
    energy, window = report["settings"]["energy"], report["settings"]["window"]
    stable = {name: [stable_rank(d[name]) for d in dense] for name in dense[0]}
    for layer in report["layers"]:
        sigmas = [d[layer["name"]] for d in dense]
        np.testing.assert_allclose(layer["stable_rank"], stable[layer["name"]], rtol=1e-8)
        frobenius = [float(np.sqrt(np.sum(s**2))) for s in sigmas]
        np.testing.assert_allclose(layer["frobenius_norm"], frobenius, rtol=1e-8)
        assert layer["energy_rank"] == [energy_k(s, energy) for s in sigmas], layer["name"]
    drifting = {f["layer"] for f in report["findings"] if f["rule"] == "stable-rank-drift"}
    flagged = {layer["name"] for layer in report["layers"] if "stable_rank" in layer["drift"]}
    assert drifting == flagged and len(drifting) <= report["drifting_layers"]
    for finding in report["findings"]:
        if finding["rule"] == "stable-rank-drift":  # rising, without falling, over the window
            tail = stable[finding["layer"]][-window:]
            assert all(b >= a * (1 - 1e-6) for a, b in itertools.pairwise(tail))
            assert finding["measured"] == pytest.approx((tail[-1] - tail[0]) / tail[0], rel=1e-8)
            assert finding["measured"] >= finding["limit"]


def test_no_torch_was_needed_when_it_is_absent() -> None:
    """In the torch-free install, nothing above imported torch."""
    from factories import HAS_TORCH

    if HAS_TORCH:
        pytest.skip("torch is installed here; the torch-free CI run checks this")
    assert "torch" not in sys.modules
