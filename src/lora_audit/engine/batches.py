"""Chunks of equal-shape layers brought to the compute device within a memory budget.

:func:`map_groups` is the general tool for batch functions that need the factors themselves
on the compute device (compression on CUDA, base-aware metrics): chunks sized to a memory
budget, upcast to float64 on the compute device, checked for NaN/Inf, and handed to the
function. Only one chunk is held upcast at a time. On CUDA, an out-of-memory error halves the
chunk, and at one layer falls back to the CPU with a warning."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from lora_audit.adapter import Adapter, LoraLayer, Structure
from lora_audit.engine.device import EngineOptions, resolve_device
from lora_audit.errors import InputError

if TYPE_CHECKING:
    import torch

#: Bytes of float64 working memory per chunk on the CPU.
CPU_CHUNK_BYTES = 512 * 1024 * 1024


#: Fraction of free GPU memory a chunk may use.
GPU_MEMORY_FRACTION = 0.5


#: Working copies held per layer beyond the factors themselves (products, QR workspace).
WORKING_COPIES = 3


R = TypeVar("R")
BatchFn = Callable[[Sequence[LoraLayer], "torch.Tensor", "torch.Tensor"], Sequence[R]]


Progress = Callable[[int], None]


Warn = Callable[[str], None]


def group_layers(layers: Sequence[LoraLayer]) -> list[list[LoraLayer]]:
    """Layers grouped by ``(out, r, in)``, groups and members in file order."""
    groups: dict[tuple[int, int, int], list[LoraLayer]] = {}
    for layer in layers:
        groups.setdefault(layer.group_key, []).append(layer)
    return list(groups.values())


def map_groups(
    adapter: Adapter,
    fn: BatchFn[R],
    *,
    options: EngineOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> dict[str, R]:
    """Apply ``fn(layers, B, A)`` to every chunk of equal-shape layers.

    ``B`` has shape ``(n, out, r)`` and ``A`` shape ``(n, r, in)``, float64 on the compute
    device, *without* the layer scales applied. Returns ``fn``'s results by layer name.
    """
    import torch

    device = resolve_device(options.device)
    results: dict[str, R] = {}
    for group in group_layers(adapter.layers):
        start = 0
        size = _chunk_size(group[0], device=device, budget=options.chunk_bytes)
        while start < len(group):
            chunk = group[start : start + size]
            try:
                b, a = _load_chunk(adapter, chunk, device=device)
                out = fn(chunk, b, a)
                del b, a
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc):
                    raise
                torch.cuda.empty_cache()
                if len(chunk) > 1:  # halve what was tried, not a budget larger than the group
                    size = len(chunk) // 2
                    continue
                if warn is not None:
                    warn(f"GPU out of memory on {chunk[0].name}; continuing on the CPU")
                device = torch.device("cpu")
                size = _chunk_size(group[0], device=device, budget=options.chunk_bytes)
                continue
            results.update((layer.name, value) for layer, value in zip(chunk, out, strict=True))
            start += len(chunk)
            if progress is not None:
                progress(len(chunk))
    return results


def _is_oom(exc: BaseException) -> bool:
    """CUDA out-of-memory, including allocation failures inside cuBLAS / cuSOLVER."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return "CUDA" in text and ("out of memory" in text or "ALLOC_FAILED" in text)


def _chunk_size(layer: LoraLayer, *, device: torch.device, budget: int | None) -> int:
    import torch

    per_layer = 8 * layer.rank * (layer.out_features + layer.in_features) * WORKING_COPIES
    if budget is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = int(free * GPU_MEMORY_FRACTION)
        else:
            budget = CPU_CHUNK_BYTES
    return max(1, budget // max(per_layer, 1))


def _load_chunk(
    adapter: Adapter, chunk: Sequence[LoraLayer], *, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    first = chunk[0]
    n = len(chunk)
    b = torch.empty((n, first.out_features, first.rank), dtype=torch.float64, device=device)
    a = torch.empty((n, first.rank, first.in_features), dtype=torch.float64, device=device)
    for i, layer in enumerate(chunk):
        b_i, a_i = _stored_factors(adapter, layer)
        b[i].copy_(torch.from_numpy(b_i).to(device, non_blocking=True))  # upcast on the device
        a[i].copy_(torch.from_numpy(a_i).to(device, non_blocking=True))
    # A NaN or Inf makes its layer's sum non-finite; one reduction pass, no boolean copy. A
    # finite sum cannot hide one, and a non-finite sum of finite values (overflow, float64
    # factors only) is told apart by the exact check below.
    suspect = ~(torch.isfinite(b.sum(dim=(1, 2))) & torch.isfinite(a.sum(dim=(1, 2))))
    if bool(suspect.any()):
        for i in suspect.nonzero().flatten().tolist():
            for key, factor in ((chunk[i].b_key, b[i]), (chunk[i].a_key, a[i])):
                if not bool(torch.isfinite(factor).all()):
                    raise _non_finite(adapter, key)
    return b, a


def _stored_factors(
    adapter: Adapter, layer: LoraLayer
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]:
    """``(B, A)`` in their stored precision for a plain LoRA layer, so that fewer bytes cross
    to the device; float64 thin factors otherwise."""
    if layer.structure is not Structure.LORA:
        return adapter.load_factors(layer)
    b, a = adapter.load_stored(layer)
    return np.ascontiguousarray(b), np.ascontiguousarray(a)


def _non_finite(adapter: Adapter, key: str) -> InputError:
    return InputError(
        f"{adapter.tensor_file}: tensor {key!r} contains NaN or Inf",
        hint="the training run diverged or the file is corrupt; use an earlier checkpoint",
    )
