"""Every command on every bundled sample adapter, checked against dense float64 references.

This module imports neither torch nor any library that needs it, so it runs in the default
(torch-free) install too: CI runs it in both environments.
"""

from __future__ import annotations

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


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=IDS)
def test_compress_writes_the_optimal_truncation(path: Path, tmp_path: Path) -> None:
    out = tmp_path / ("out" if path.is_dir() else "out.safetensors")
    dora = ["--allow-dora"] if "dora" in path.name else []  # B·A truncated, magnitudes kept
    result = runner.invoke(app, ["compress", str(path), "-o", str(out), "--energy", "0.9", *dora])
    if result.exit_code == 3 and "cannot be compressed" in result.stderr:
        pytest.skip(result.stderr.strip())  # a structure compress refuses by name
    assert result.exit_code == 0, result.stderr
    before, after = dense_sigmas(path), dense_sigmas(out)
    for name, sigma in after.items():
        k = int((sigma > 1e-6 * max(float(sigma[0]), 1e-300)).sum())
        np.testing.assert_allclose(
            sigma[:k], before[name][:k], rtol=2e-2 if "bf16" in path.name else 1e-4
        )


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=IDS)
def test_compare_with_itself_is_zero_difference(path: Path) -> None:
    report = run_json(["compare", str(path), str(path), "--format", "json"])
    assert report["summary"]["matched"] == len(dense_sigmas(path))
    assert report["summary"]["relative_difference"] in (0.0, None) or (
        report["summary"]["relative_difference"] < 1e-12
    )


def test_trend_over_the_checkpoint_series() -> None:
    report = run_json(["trend", str(SAMPLES / "minilm-run"), "--format", "json"])
    assert len(report["checkpoints"]) >= 3


def test_no_torch_was_needed_when_it_is_absent() -> None:
    """In the torch-free install, nothing above imported torch."""
    from factories import HAS_TORCH

    if HAS_TORCH:
        pytest.skip("torch is installed here; the torch-free CI run checks this")
    assert "torch" not in sys.modules
