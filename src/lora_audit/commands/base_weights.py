"""The base weights and DoRA magnitudes of a chunk of layers, loaded next to their factors.

Both base-aware pipelines (``inspect --base`` and ``compress --base`` of a DoRA adapter) run
batch functions over chunks of equal-shape layers with :func:`map_with_weights`, which sizes
the chunks for the weights each layer also holds, and load ``W`` (and DoRA's magnitudes)
with :func:`load_weights` and :func:`load_magnitudes`, checked for NaN/Inf."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.engine.batches import (
    CPU_CHUNK_BYTES,
    GPU_MEMORY_FRACTION,
    WORKING_COPIES,
    Warn,
    group_layers,
    map_groups,
)
from lora_audit.engine.device import EngineOptions, require_torch, resolve_device
from lora_audit.errors import InputError, UsageError
from lora_audit.formats.base_model import (
    BaseMatch,
    BaseModel,
    BaseWeight,
    magnitude_key,
)
from lora_audit.linalg.krylov import KrylovOptions

if TYPE_CHECKING:
    import torch


def chunk_bytes_with_weights(
    layer: LoraLayer, *, device: torch.device, krylov: KrylovOptions, ks: Mapping[str, int]
) -> int:
    """``EngineOptions.chunk_bytes`` that makes :func:`map_groups` take as many layers as fit.

    ``map_groups`` sizes chunks for the factors alone; here each layer also holds ``W``
    (stored, float64, and a working copy) and the Krylov bases of ``W`` and ``W + ΔW``.
    """
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * GPU_MEMORY_FRACTION / 2)
    else:
        budget = CPU_CHUNK_BYTES
    out, inp, r = layer.out_features, layer.in_features, layer.rank
    basis = min(min(out, inp), krylov.max_steps * (max([*ks.values(), r]) + krylov.oversample))
    per_layer = 8 * (3 * out * inp + 2 * (out + inp) * basis + basis * basis)
    fit = max(1, budget // max(per_layer, 1))
    factors = 8 * r * (out + inp) * WORKING_COPIES
    return fit * factors


def load_weights(
    adapter: Adapter,
    base: BaseModel,
    match: BaseMatch,
    chunk: Sequence[LoraLayer],
    *,
    like: torch.Tensor,
) -> torch.Tensor:
    """``W`` of each layer of the chunk, shape (n, out, in), float64 on ``like``'s device."""
    import torch

    first = chunk[0]
    w = torch.empty(
        (len(chunk), first.out_features, first.in_features), dtype=like.dtype, device=like.device
    )
    for i, layer in enumerate(chunk):
        ref: BaseWeight = match.weights[layer.name]
        stored = base.load(ref, out_features=layer.out_features, in_features=layer.in_features)
        w[i].copy_(torch.from_numpy(stored))
        if not bool(torch.isfinite(w[i].sum())) and not bool(torch.isfinite(w[i]).all()):
            raise InputError(
                f"{ref.file}: tensor {ref.key!r} contains NaN or Inf",
                hint="the base checkpoint is corrupt",
            )
    return w


def load_magnitudes(
    adapter: Adapter, chunk: Sequence[LoraLayer], *, like: torch.Tensor
) -> torch.Tensor:
    """DoRA magnitudes of each layer of the chunk, shape (n, out), float64."""
    import torch

    assert adapter.source is not None
    rows = []
    for layer in chunk:
        key = magnitude_key(layer)
        assert key is not None
        m = torch.from_numpy(adapter.source.get(key).reshape(-1))
        if m.numel() != layer.out_features:
            raise InputError(
                f"{adapter.tensor_file}: {key!r} has {m.numel()} values, but layer "
                f"{layer.name!r} has {layer.out_features} outputs",
                hint="the DoRA magnitude does not belong to this layer; the file is corrupt",
            )
        if not bool(torch.isfinite(m).all()):
            raise InputError(f"{adapter.tensor_file}: tensor {key!r} contains NaN or Inf")
        rows.append(m.to(device=like.device, dtype=like.dtype))
    return torch.stack(rows)


def map_with_weights(
    adapter: Adapter, fn: Any, *, engine: EngineOptions, warn: Warn | None
) -> dict[str, Any]:
    """:func:`map_groups` with chunks sized for the base weights each layer also loads."""
    require_torch("--base")
    device = resolve_device(engine.device)
    results: dict[str, Any] = {}
    krylov = KrylovOptions(max_steps=0)
    for group in group_layers(adapter.layers):
        part = replace(adapter, layers=tuple(group))
        budget = chunk_bytes_with_weights(group[0], device=device, krylov=krylov, ks={})
        results.update(map_groups(part, fn, options=replace(engine, chunk_bytes=budget), warn=warn))
    return results


def check_base_options(path: Path | None, *, k: int | None, partial: bool) -> None:
    """Fail early on ``--base`` options that cannot work, before any spectrum is computed.

    Raises
    ------
    UsageError
        For ``--base-k``/``--base-partial`` without ``--base``, or ``--base-k`` below 1.
    InputError
        When the base path does not exist.
    """
    if path is None:
        given = "--base-k" if k is not None else "--base-partial"
        raise UsageError(f"{given} needs --base", hint="add --base path/to/base-model")
    if k is not None and k < 1:
        raise UsageError(f"--base-k {k} must be at least 1")
    if not path.exists():
        raise InputError(f"--base {path}: no such file or directory")
    require_torch("--base")
