"""Whole-adapter audit: every number against a dense float64 reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_adapter_dirs, sample_sd_files

from lora_audit.adapter import Adapter, LayerKind
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.decisions.advice_rule import DEFAULT_ADVICE_RULE
from lora_audit.engine.device import EngineOptions
from lora_audit.formats import load_adapter
from lora_audit.report import InspectReport

TOL = 1e-6


def dense_delta(adapter: Adapter, name: str) -> np.ndarray:
    """ΔW = scale·B·A (transposed for embeddings), materialised in float64."""
    layer = next(layer for layer in adapter.layers if layer.name == name)
    b, a = adapter.load_factors(layer)  # structured layers: their thin factors, checked elsewhere
    delta = layer.scale * (b @ a)
    return delta.T if layer.kind is LayerKind.EMBEDDING else delta


def check_against_dense(adapter: Adapter, report: InspectReport) -> float:
    worst = 0.0
    for lr in report.layers:
        delta = dense_delta(adapter, lr.name)
        ref = np.zeros(lr.rank)
        s = np.linalg.svd(delta, compute_uv=False)[: lr.rank]
        ref[: s.size] = s
        top = max(ref[0], np.finfo(float).tiny)
        err = float(np.abs(np.array(lr.singular_values) - ref).max() / top)
        worst = max(worst, err)
        assert err <= TOL, (lr.name, err)
        if ref[0] > 0:
            fro2 = float(np.sum(delta * delta))
            assert lr.frobenius_norm == pytest.approx(np.sqrt(fro2), rel=TOL)
            assert lr.spectral_norm == pytest.approx(ref[0], rel=TOL)
            assert lr.stable_rank == pytest.approx(fro2 / ref[0] ** 2, rel=TOL)
            energy = np.cumsum(ref**2) / np.sum(ref**2)
            assert np.allclose(lr.energy, energy, atol=TOL)
            k = int(np.argmax(energy >= report.settings.energy * (1 - 1e-12))) + 1
            assert lr.energy_rank == k
            # waste is what compress removes: a structured layer only when LoRA at k is smaller
            shrinks = lr.structure == "lora" or k * sum(lr.shape) < lr.params
            assert lr.wasted_rank == (lr.rank - k if shrinks else 0)
            assert lr.params_after == (k * sum(lr.shape) if shrinks else lr.params)
        else:
            assert lr.untrained and lr.energy_rank == 0
    return worst


@pytest.mark.parametrize("method", ["auto", "qr", "gram"])
def test_mixed_adapter_matches_dense(mixed_adapter: Path, method: str) -> None:
    adapter = load_adapter(mixed_adapter)
    options = AuditOptions(energy=0.95, engine=EngineOptions(device="cpu", method=method))  # type: ignore[arg-type]
    report = inspect_adapter(adapter, options=options)
    assert len(report.layers) == 7
    check_against_dense(adapter, report)
    emb = next(lr for lr in report.layers if lr.kind == "embedding")
    assert emb.shape == (16, 60) and emb.weight_shape == (60, 16)


def test_chunking_does_not_change_results(mixed_adapter: Path) -> None:
    adapter = load_adapter(mixed_adapter)
    big = inspect_adapter(adapter, options=AuditOptions(engine=EngineOptions(device="cpu")))
    tiny = inspect_adapter(
        adapter, options=AuditOptions(engine=EngineOptions(device="cpu", chunk_bytes=1))
    )
    assert [lr.singular_values for lr in big.layers] == [lr.singular_values for lr in tiny.layers]


def test_summary_totals(mixed_adapter: Path) -> None:
    rule = dataclasses.replace(DEFAULT_ADVICE_RULE, tau=0.99)  # the plan's k@τ = the waste's
    options = AuditOptions(energy=0.99, coverage=0.5, advice=rule)
    report = inspect_adapter(load_adapter(mixed_adapter), options=options)
    s = report.summary
    assert s.params == sum(lr.rank * sum(lr.shape) for lr in report.layers)
    assert s.params_after == sum(lr.energy_rank * sum(lr.shape) for lr in report.layers)
    waste = sum((lr.rank - lr.energy_rank) * sum(lr.shape) for lr in report.layers)
    assert s.wasted_fraction == pytest.approx(waste / s.params)
    assert s.wasted_fraction == pytest.approx(1 - s.params_after / s.params)  # plain LoRA
    assert s.untrained_layers == ("model.layers.1.down_proj",)
    assert any("untrained" in line for line in s.advice)
    assert s.recommended_rank == 4 and len(s.rank_pattern) == 2  # the full-rank emb and conv
    assert any(line.startswith("Retrain at r=4") for line in s.advice)


@pytest.mark.parametrize("path", sample_adapter_dirs(), ids=lambda p: p.name)
def test_sample_adapters_match_dense(path: Path) -> None:
    adapter = load_adapter(path)
    report = inspect_adapter(adapter, options=AuditOptions())
    assert report.layers
    assert check_against_dense(adapter, report) <= TOL
    assert all(not lr.untrained for lr in report.layers), "sample adapters are trained"


@pytest.mark.parametrize("path", sample_sd_files(), ids=lambda p: p.name)
def test_sample_sd_files_match_dense(path: Path) -> None:
    adapter = load_adapter(path)
    report = inspect_adapter(adapter, options=AuditOptions())
    assert report.adapter.format in {"kohya", "lycoris", "diffusers"}
    assert check_against_dense(adapter, report) <= TOL
