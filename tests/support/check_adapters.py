"""Adapters on disk for the check tests: lean, wasteful, with an untrained layer, unreadable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from factories import FakeAdapter, FakeLayer, planted_factors, write_peft


def _layer(name: str, *, rank: int, spectrum: list[float], seed: int) -> FakeLayer:
    b, a = planted_factors(out=32, inp=24, rank=rank, spectrum=np.array(spectrum), seed=seed)
    return FakeLayer(name, b, a)


def write_lean(directory: Path) -> Path:
    """r=4, every layer needs all 4 singular values at τ=0.99: no waste."""
    layers = [
        _layer(f"model.layers.{i}.q_proj", rank=4, spectrum=[4.0, 3, 2, 1.5], seed=i)
        for i in range(2)
    ]
    return write_peft(directory, FakeAdapter(layers))


def write_wasteful(directory: Path) -> Path:
    """r=16, each layer uses 2: 87.5% of the parameters are wasted at τ=0.99."""
    layers = [
        _layer(f"model.layers.{i}.q_proj", rank=16, spectrum=[5.0, 1], seed=i) for i in range(2)
    ]
    return write_peft(directory, FakeAdapter(layers))


def write_untrained(directory: Path) -> Path:
    """r=4, lean, but one layer has B = 0 (ΔW = 0), as PEFT initialises it."""
    rng = np.random.default_rng(0)
    dead = FakeLayer(
        "model.layers.1.q_proj",
        np.zeros((32, 4), dtype=np.float32),
        rng.standard_normal((4, 24)).astype(np.float32),
    )
    layers = [_layer("model.layers.0.q_proj", rank=4, spectrum=[4.0, 3, 2, 1.5], seed=0), dead]
    return write_peft(directory, FakeAdapter(layers))


def write_unreadable(directory: Path) -> Path:
    """Random bytes under the right name."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_model.safetensors").write_bytes(np.random.default_rng(0).bytes(256))
    return directory
