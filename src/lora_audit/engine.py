"""Run the spectral math over an adapter: group equal shapes, batch, stream, pick a device.

Layers are grouped by ``(out, r, in)``; each group is loaded from the memory-mapped file in
chunks sized to a memory budget, upcast to float64 on the compute device, checked for
NaN/Inf, and handed to a batch function. Only one chunk is held upcast at a time. On CUDA,
an out-of-memory error halves the chunk, and at one layer falls back to the CPU with a
warning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.errors import InputError, UsageError
from lora_audit.spectral import Method, singular_values

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

DeviceName = Literal["auto", "cpu", "cuda"]
R = TypeVar("R")

#: Bytes of float64 working memory per chunk on the CPU.
CPU_CHUNK_BYTES = 512 * 1024 * 1024
#: Fraction of free GPU memory a chunk may use.
GPU_MEMORY_FRACTION = 0.5
#: Working copies held per layer beyond the factors themselves (products, QR workspace).
WORKING_COPIES = 3

BatchFn = Callable[[Sequence[LoraLayer], "torch.Tensor", "torch.Tensor"], Sequence[R]]
Progress = Callable[[int], None]
Warn = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """How the spectra are computed.

    Attributes
    ----------
    device
        ``"auto"`` uses CUDA when available, else the CPU.
    method
        Core factorisation; see :mod:`lora_audit.spectral`.
    chunk_bytes
        Working-memory budget per chunk; ``None`` sizes it from the device.
    """

    device: DeviceName = "auto"
    method: Method = "auto"
    chunk_bytes: int | None = None


def resolve_device(name: DeviceName) -> torch.device:
    """The torch device for ``name``; ``cuda`` without a GPU is a usage error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda: no CUDA device is available", hint="use --device auto or cpu"
        )
    return torch.device(name)


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
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if size > 1:
                    size = max(1, size // 2)
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
        b_i, a_i = adapter.load_factors(layer)
        b[i].copy_(b_i.to(device, non_blocking=True))
        a[i].copy_(a_i.to(device, non_blocking=True))
    bad_b = ~torch.isfinite(b).flatten(1).all(dim=1)
    bad_a = ~torch.isfinite(a).flatten(1).all(dim=1)
    for i, layer in enumerate(chunk):
        if bool(bad_b[i]) or bool(bad_a[i]):
            key = layer.b_key if bool(bad_b[i]) else layer.a_key
            raise InputError(
                f"{adapter.tensor_file}: tensor {key!r} contains NaN or Inf",
                hint="the training run diverged or the file is corrupt; use an earlier checkpoint",
            )
    return b, a


def spectra(
    adapter: Adapter,
    *,
    options: EngineOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> dict[str, npt.NDArray[np.float64]]:
    """Singular values of every layer's ``ΔW = scale·B·A``, by layer name.

    Returns
    -------
    dict of str to ndarray of shape (rank,), float64, descending, zero-padded.
    """
    import torch

    def batch(
        layers: Sequence[LoraLayer], b: torch.Tensor, a: torch.Tensor
    ) -> list[npt.NDArray[np.float64]]:
        sigma = singular_values(b, a, method=options.method).cpu().numpy()
        return [abs(layer.scale) * sigma[i] for i, layer in enumerate(layers)]

    return map_groups(adapter, batch, options=options, progress=progress, warn=warn)
