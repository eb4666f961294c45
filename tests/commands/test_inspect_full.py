"""``inspect --base BASE TUNED`` on a real full fine-tune, against a dense float64 SVD of ΔW."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.torch import load_file as torch_load
from safetensors.torch import save_file as torch_save

from lora_audit.commands.inspect_full import FullOptions, inspect_full

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_finetune import full_finetune  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return full_finetune(tmp_path_factory.mktemp("ft"))


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in load_file(str(path / "model.safetensors")).items()}


def _dense(pair: tuple[Path, Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    base, tuned = _tensors(pair[0]), _tensors(pair[1])
    return {k: (base[k], tuned[k]) for k in base if base[k].ndim == 2 and "embed" not in k}


def _k_at(s: np.ndarray, tau: float) -> int:
    c = np.cumsum(s**2)
    return int(np.argmax(c >= tau * c[-1])) + 1 if c[-1] > 0 else 0


@pytest.mark.parametrize("tau", [0.5, 0.99])
def test_every_layer_equals_the_dense_svd(pair: tuple[Path, Path], tau: float) -> None:
    report = inspect_full(pair[1], base=pair[0], options=FullOptions(energy=tau))
    dense = _dense(pair)
    assert {x.key for x in report.layers} == set(dense)
    assert "krylov" in report.summary.methods  # the Krylov path, not only the full SVD
    for layer in report.layers:
        w, wt = dense[layer.key]
        s = np.linalg.svd(wt - w, compute_uv=False)
        assert layer.energy_rank == _k_at(s, tau), layer.name
        k = len(layer.singular_values)
        if k:
            np.testing.assert_allclose(layer.singular_values, s[:k], rtol=1e-6, atol=0)
            np.testing.assert_allclose(
                layer.energy, np.cumsum(s[:k] ** 2) / (s**2).sum(), rtol=1e-9
            )
        assert layer.frobenius_norm == pytest.approx(np.linalg.norm(wt - w), rel=1e-12)
        sw, sm = np.linalg.norm(w, 2), np.linalg.norm(wt, 2)
        assert layer.weight_stable_rank == pytest.approx((w**2).sum() / sw**2, rel=1e-6)
        assert layer.merged_stable_rank == pytest.approx((wt**2).sum() / sm**2, rel=1e-6)
        rel = np.linalg.norm(wt - w) / np.linalg.norm(w)
        assert layer.relative_frobenius == pytest.approx(rel, rel=1e-12)


def test_nothing_is_dropped_and_other_tensors_are_listed(pair: tuple[Path, Path]) -> None:
    report = inspect_full(pair[1], base=pair[0], options=FullOptions())
    base = _tensors(pair[0])
    listed = {x.key for x in report.layers} | {t.key for t in report.tensors}
    assert listed == set(base)
    kinds = {t.key: t.kind for t in report.tensors}
    assert kinds["embeddings.word_embeddings.weight"] == "embedding"
    assert kinds["embeddings.LayerNorm.weight"] == "vector"
    tuned = _tensors(pair[1])
    for t in report.tensors:
        d = np.linalg.norm(tuned[t.key] - base[t.key])
        assert t.frobenius_norm == pytest.approx(d, rel=1e-12, abs=0)
        assert t.changed == (d > 0)
    assert report.summary.unchanged_layers == ("pooler.dense",)  # the loss never reaches it


def test_high_rank_takes_the_full_svd_and_says_so(pair: tuple[Path, Path]) -> None:
    report = inspect_full(
        pair[1], base=pair[0], options=FullOptions(energy=0.99, high_rank_fraction=0.01)
    )
    changed = [x for x in report.layers if x.frobenius_norm > 0]
    assert all(x.method == "full_svd" and x.high_rank for x in changed)
    assert report.summary.high_rank_layers and any("high rank" in w for w in report.warnings)
    krylov = inspect_full(pair[1], base=pair[0], options=FullOptions(energy=0.99))
    for a, b in zip(changed, krylov.layers, strict=False):
        assert a.energy_rank == b.energy_rank


def test_bf16_prefixed_keys_and_extra_tensors(tmp_path: Path) -> None:
    base, tuned = full_finetune(tmp_path, steps=2, dtype=torch.bfloat16)
    stored = torch_load(str(tuned / "model.safetensors"))
    renamed = {f"bert.{k}": v for k, v in stored.items()}  # saved from a task model
    renamed["classifier.weight"] = torch.zeros(2, 96)
    (tuned / "model.safetensors").unlink()
    torch_save(renamed, str(tuned / "model.safetensors"))
    warnings: list[str] = []
    report = inspect_full(tuned, base=base, options=FullOptions(), warn=warnings.append)
    assert report.summary.only_in_tuned == ("classifier.weight",)
    assert any("classifier.weight" in w for w in warnings)
    layer = next(x for x in report.layers if x.name == "encoder.layer.0.intermediate.dense")
    assert layer.key == "bert.encoder.layer.0.intermediate.dense.weight" and layer.dtype == "BF16"
    b16 = torch_load(str(base / "model.safetensors"))
    # bf16 is read exactly (widened): ΔW is the exact difference of the stored values
    ref = (renamed[layer.key].double() - b16[layer.base_key].double()).numpy()
    s = np.linalg.svd(ref, compute_uv=False)
    np.testing.assert_allclose(layer.singular_values, s[: len(layer.singular_values)], rtol=1e-6)
    assert math.isclose(layer.frobenius_norm, float(np.linalg.norm(ref)), rel_tol=1e-12)
