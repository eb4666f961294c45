"""Streaming rank-k refactorisation over an adapter, against a dense float64 SVD."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import FakeAdapter, FakeLayer, write_peft

from lora_audit.adapter import Adapter
from lora_audit.engine.device import EngineOptions
from lora_audit.engine.refactorisation import _on_device, _scaled_maps, truncate_layers
from lora_audit.engine.spectra import analyse
from lora_audit.formats import load_adapter

TOL = 1e-6


def dense_best(adapter: Adapter, name: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``scale·B·A`` and its best rank-k approximation, from a dense float64 SVD."""
    layer = next(x for x in adapter.layers if x.name == name)
    b, a = adapter.load_factors(layer)
    delta = layer.scale * (b @ a)
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return delta, (u[:, :k] * s[:k]) @ vt[:k]


def keep(layer: object, b: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return b, a


@pytest.mark.parametrize("method", ["auto", "gram", "qr"])
def test_every_layer_is_the_optimal_truncation(mixed_adapter: Path, method: str) -> None:
    adapter = load_adapter(mixed_adapter)
    options = EngineOptions(device="cpu", method=method)  # type: ignore[arg-type]
    analysis = analyse(adapter, options=options, keep_grams=True)
    if method == "qr":
        assert analysis.grams == {}  # nothing to reuse: every layer goes through QR
    ranks = {layer.name: 2 for layer in adapter.layers}
    ticks: list[int] = []
    got = truncate_layers(
        adapter,
        ranks=ranks,
        grams=analysis.grams,
        finish=keep,
        options=options,
        progress=ticks.append,
    )
    assert set(got) == set(ranks) and sum(ticks) == len(ranks)
    for name, (b_k, a_k) in got.items():
        delta, best = dense_best(adapter, name, 2)
        assert b_k.dtype == np.float64 and b_k.shape[1] == a_k.shape[0] == 2
        assert np.linalg.norm(b_k @ a_k - best) <= TOL * max(np.linalg.norm(delta), 1e-300)


def test_gram_and_qr_paths_give_the_same_factors(mixed_adapter: Path) -> None:
    adapter = load_adapter(mixed_adapter)
    options = EngineOptions(device="cpu")
    grams = analyse(adapter, options=options, keep_grams=True).grams
    assert set(grams) == {layer.name for layer in adapter.layers}  # auto kept them all here
    ranks = {layer.name: 3 for layer in adapter.layers}
    by_gram = truncate_layers(adapter, ranks=ranks, grams=grams, finish=keep, options=options)
    by_qr = truncate_layers(adapter, ranks=ranks, grams={}, finish=keep, options=options)
    for name, (b_g, a_g) in by_gram.items():
        b_q, a_q = by_qr[name]
        sigma = np.linalg.norm(b_q, axis=0) ** 2  # column j of B′ has norm √σ_j
        separated = np.all(-np.diff(sigma) > 1e-3 * sigma[0]) if sigma[0] > 0 else False
        if separated:  # unique singular vectors: the same factors, signs included
            assert np.allclose(b_g, b_q, rtol=0, atol=1e-9 * np.sqrt(sigma[0]))
            assert np.allclose(a_g, a_q, rtol=0, atol=1e-9 * np.sqrt(sigma[0]))


def test_negative_scale_is_split_into_both_factors(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    layers = [
        FakeLayer("m.q", torch.randn(20, 4, generator=gen), torch.randn(4, 12, generator=gen))
    ]
    path = write_peft(tmp_path / "neg", FakeAdapter(layers, {"r": 4, "lora_alpha": -8}))
    adapter = load_adapter(path)
    assert adapter.layers[0].scale == -2.0
    options = EngineOptions(device="cpu")
    grams = analyse(adapter, options=options, keep_grams=True).grams
    for source in (grams, {}):
        ((b_k, a_k),) = truncate_layers(
            adapter, ranks={"m.q": 2}, grams=source, finish=keep, options=options
        ).values()
        delta, best = dense_best(adapter, "m.q", 2)
        assert np.linalg.norm(b_k @ a_k - best) <= TOL * np.linalg.norm(delta)
        # balanced: ‖B′ column‖ = ‖A′ row‖ = √σ_j
        assert np.allclose(np.linalg.norm(b_k, axis=0), np.linalg.norm(a_k, axis=1))


def test_device_path_agrees_with_the_cpu_path(mixed_adapter: Path) -> None:
    # the CUDA path (chunks through map_groups, the same maps applied on the device, QR for the
    # rest) runs unchanged on the CPU device
    adapter = load_adapter(mixed_adapter)
    options = EngineOptions(device="cpu")
    grams = analyse(adapter, options=options, keep_grams=True).grams
    names = [layer.name for layer in adapter.layers]
    ranks = {name: 1 + i % 3 for i, name in enumerate(names)}
    without = set(names[::2])  # half of the layers go through the QR fallback
    partial = {n: g for n, g in grams.items() if n not in without}
    cpu = truncate_layers(adapter, ranks=ranks, grams=partial, finish=keep, options=options)
    subset = replace(adapter, layers=tuple(x for x in adapter.layers if x.name in ranks))
    maps = {x.name: _scaled_maps(x, partial[x.name], rank=ranks[x.name]) for x in subset.layers
            if x.name in partial}  # fmt: skip
    device = _on_device(subset, ranks=ranks, maps=maps, finish=keep, options=options,
                        progress=None, warn=None)  # fmt: skip
    assert set(device) == set(cpu)
    for name, (b_c, a_c) in cpu.items():
        b_d, a_d = device[name]
        scale = max(float(np.abs(b_c @ a_c).max()), 1e-300)
        assert np.allclose(b_d @ a_d, b_c @ a_c, rtol=0, atol=1e-10 * scale)


def test_only_the_named_layers_are_read(mixed_adapter: Path) -> None:
    adapter = load_adapter(mixed_adapter)
    options = EngineOptions(device="cpu")
    grams = analyse(adapter, options=options, keep_grams=True).grams
    name = adapter.layers[0].name
    got = truncate_layers(adapter, ranks={name: 1}, grams=grams, finish=keep, options=options)
    assert list(got) == [name]
    assert truncate_layers(adapter, ranks={}, grams=grams, finish=keep, options=options) == {}
