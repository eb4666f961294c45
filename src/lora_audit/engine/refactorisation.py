"""Refactorise layers to lower rank over a whole adapter, streaming, from the audit's Grams.

For each layer given a rank ``k``, the balanced factors ``B′`` (out, k) and ``A′`` (k, in) of
the best rank-k approximation of ``scale·B·A``, with the scale baked in (``B′·A′ = ΔW_k``).

* A layer whose Gram matrices the audit kept (:func:`lora_audit.engine.spectra.analyse` with
  ``keep_grams``) costs two thin products: ``B′ = B·M_B`` and ``A′ = M_A·A`` with the ``r×k``
  maps of :func:`lora_audit.linalg.spectral.gram_truncation`, built from the ``r×r`` Grams alone.
  No QR, no ``out×r`` orthonormal basis, no second factorisation of the same data.
* Any other layer (``--method qr``, a spectrum ``auto`` redid by QR, LoKr) is refactorised by
  QR of its factors (:func:`lora_audit.linalg.spectral.qr_truncation`).

On the CPU the layers are read one at a time into reused float64 buffers
(:class:`lora_audit.engine.host_buffers.Readers`, a few threads) and each result is handed to
``finish`` as soon as it exists, in the worker thread, so memory holds one layer upcast per
thread plus what ``finish`` keeps (the caller rounds to the stored dtype there). The CPU path
is numpy only: mixing torch's thread pool with OpenBLAS's in one loop makes both crawl. On
CUDA, :func:`lora_audit.engine.batches.map_groups` brings chunks of layers to the device and the
same
maps are applied there. Signs follow :func:`lora_audit.linalg.spectral.svd`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.engine.batches import Progress, Warn, map_groups
from lora_audit.engine.device import EngineOptions, device_type
from lora_audit.engine.host_buffers import Readers, cpu_pool
from lora_audit.engine.spectra import Grams
from lora_audit.linalg.spectral import Float64Array, fix_signs, gram_truncation, qr_truncation
from lora_audit.linalg.stacking import split_scale

if TYPE_CHECKING:
    import torch

R = TypeVar("R")

#: Receives one layer's new factors, float64 host arrays ``b`` (out, k) and ``a`` (k, in)
#: that it may keep, and returns what the caller keeps (for example the factors rounded to
#: the stored dtype). Called from worker threads: it must not touch shared state.
Finish = Callable[[LoraLayer, Float64Array, Float64Array], R]


def truncate_layers(
    adapter: Adapter,
    *,
    ranks: Mapping[str, int],
    grams: Mapping[str, Grams],
    finish: Finish[R],
    options: EngineOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> dict[str, R]:
    """``finish(layer, B′, A′)`` for every layer named in ``ranks``, by layer name.

    Parameters
    ----------
    adapter
        The adapter the layers are read from.
    ranks
        ``k`` for each layer to refactorise (``1 ≤ k``; cut to what the layer has).
    grams
        Unscaled Gram matrices from the audit, for the layers that have them.
    finish
        Called once per layer with the new factors, possibly from a worker thread.
    options
        ``device`` picks the CPU or the CUDA path.
    """
    layers = tuple(layer for layer in adapter.layers if layer.name in ranks)
    if not layers:
        return {}
    subset = replace(adapter, layers=layers)
    if device_type(options.device) == "cuda":
        maps = {
            layer.name: _scaled_maps(layer, grams[layer.name], rank=ranks[layer.name])
            for layer in layers
            if layer.name in grams
        }
        return _on_device(
            subset,
            ranks=ranks,
            maps=maps,
            finish=finish,
            options=options,
            progress=progress,
            warn=warn,
        )
    return _on_cpu(subset, ranks=ranks, grams=grams, finish=finish, progress=progress)


Maps = tuple[Float64Array, Float64Array]


def _scaled_maps(layer: LoraLayer, grams: Grams, *, rank: int) -> Maps:
    """:func:`gram_truncation` maps with the layer scale split evenly into both factors."""
    map_b, map_a = gram_truncation(grams.b, grams.a, rank=rank)
    to_b, to_a = split_scale(layer.scale)
    return map_b * to_b, map_a * to_a


def _cpu_layer(
    readers: Readers, layer: LoraLayer, *, rank: int, grams: Grams | None
) -> tuple[Float64Array, Float64Array]:
    maps = None if grams is None else _scaled_maps(layer, grams, rank=rank)
    b, a = readers.load(layer)  # this thread's buffers: every result below is a new array
    if maps is None:
        to_b, to_a = split_scale(layer.scale)
        b_k, a_k = qr_truncation(b * to_b, a * to_a, rank=rank)
    else:
        b_k, a_k = b @ maps[0], maps[1] @ a
    fix_signs(b_k, a_k)
    return b_k, a_k


def _on_cpu(
    adapter: Adapter,
    *,
    ranks: Mapping[str, int],
    grams: Mapping[str, Grams],
    finish: Finish[R],
    progress: Progress | None,
) -> dict[str, R]:
    def job(layer: LoraLayer) -> R:
        rank, layer_grams = ranks[layer.name], grams.get(layer.name)
        b_k, a_k = _cpu_layer(readers, layer, rank=rank, grams=layer_grams)
        return finish(layer, b_k, a_k)

    out: dict[str, R] = {}
    readers = Readers(adapter)
    with readers, cpu_pool() as pool:
        for layer, result in zip(adapter.layers, pool.map(job, adapter.layers), strict=True):
            out[layer.name] = result
            if progress is not None:
                progress(1)
    return out


def _on_device(
    adapter: Adapter,
    *,
    ranks: Mapping[str, int],
    maps: Mapping[str, Maps],
    finish: Finish[R],
    options: EngineOptions,
    progress: Progress | None,
    warn: Warn | None,
) -> dict[str, R]:
    """The same on the compute device, a chunk of equal-shape layers at a time."""

    def batch(layers: Sequence[LoraLayer], b: torch.Tensor, a: torch.Tensor) -> list[R]:
        import torch

        from lora_audit.linalg.truncation import truncated_factors

        results = []
        for i, layer in enumerate(layers):
            rank = ranks[layer.name]
            pair = maps.get(layer.name)
            if pair is None:
                scale = torch.tensor(layer.scale, dtype=b.dtype, device=b.device)
                ((b_t, a_t),) = truncated_factors(b[i : i + 1] * scale, a[i : i + 1], ranks=[rank])
                b_k, a_k = b_t.cpu().numpy(), a_t.cpu().numpy()
            else:
                map_b = torch.from_numpy(pair[0]).to(b.device)
                map_a = torch.from_numpy(pair[1]).to(b.device)
                b_k, a_k = (b[i] @ map_b).cpu().numpy(), (map_a @ a[i]).cpu().numpy()
                fix_signs(b_k, a_k)
            results.append(finish(layer, b_k, a_k))
        return results

    return map_groups(adapter, batch, options=options, progress=progress, warn=warn)
