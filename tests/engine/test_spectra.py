"""Grouping, chunking and the out-of-memory fallback of the engine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from lora_audit.adapter import LoraLayer
from lora_audit.engine.batches import group_layers, map_groups
from lora_audit.engine.device import EngineOptions
from lora_audit.formats import load_adapter


def test_groups_by_shape_in_file_order(mixed_adapter: Path) -> None:
    adapter = load_adapter(mixed_adapter)
    groups = group_layers(adapter.layers)
    assert sum(len(g) for g in groups) == len(adapter.layers)
    for group in groups:
        assert len({layer.group_key for layer in group}) == 1


def test_out_of_memory_halves_the_chunk_then_falls_back(mixed_adapter: Path) -> None:
    adapter = load_adapter(mixed_adapter)
    seen: list[int] = []
    warnings: list[str] = []
    failures = {"left": 3}

    def flaky(layers: Sequence[LoraLayer], b: torch.Tensor, a: torch.Tensor) -> list[int]:
        seen.append(len(layers))
        if len(layers) > 1 or (failures["left"] > 0 and layers[0].name.endswith("up_proj")):
            failures["left"] -= len(layers) == 1
            raise torch.cuda.OutOfMemoryError("simulated")
        return [b.shape[0]] * len(layers)

    result = map_groups(adapter, flaky, options=EngineOptions(device="cpu"), warn=warnings.append)
    assert set(result) == {layer.name for layer in adapter.layers}
    assert any("continuing on the CPU" in w for w in warnings)
    assert max(seen) > 1 and 1 in seen


def test_progress_counts_every_layer(mixed_adapter: Path) -> None:
    adapter = load_adapter(mixed_adapter)
    ticks: list[int] = []
    map_groups(
        adapter,
        lambda layers, b, a: [0] * len(layers),
        options=EngineOptions(device="cpu", chunk_bytes=1),
        progress=ticks.append,
    )
    assert sum(ticks) == len(adapter.layers)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_engine_matches_cpu(mixed_adapter: Path) -> None:
    from lora_audit.engine.spectra import spectra

    adapter = load_adapter(mixed_adapter)
    cpu = spectra(adapter, options=EngineOptions(device="cpu"))
    gpu = spectra(adapter, options=EngineOptions(device="cuda"))
    for name, sigma in cpu.items():
        top = max(float(sigma[0]), 1e-300)
        assert float(abs(gpu[name] - sigma).max()) / top <= 1e-6
