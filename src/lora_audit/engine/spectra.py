"""Run the spectral math over an adapter: group equal shapes, stream, batch, pick a device.

Layers are grouped by ``(out, r, in)``. :func:`spectra` has two paths:

* **CPU** (numpy only; torch is not even imported for a safetensors file). Each layer is
  read with one ``read`` into a reused buffer, converted to float64 into another reused
  buffer, and reduced at once to its two ``r×r`` Gram matrices (``BᵀB``, ``A·Aᵀ``, BLAS
  ``syrk``); the ``r×r`` work (:func:`~lora_audit.linalg.spectral.gram_singular_values`) is batched
  per group. Nothing larger than one layer is ever held upcast, so memory stays flat
  whatever the size of the adapter, and the file is read exactly once. Layers run in a
  pool of threads with BLAS single-threaded (:func:`lora_audit.engine.host_buffers.cpu_pool`).
* **CUDA** (torch): :func:`map_groups` copies the stored bytes of a chunk of layers to the
  GPU, converts them there, and forms the Gram matrices on the device; only the ``r×r``
  Grams come back, and they are finished on the host by the same numpy code as on the CPU,
  in a worker thread, while the next group is being copied.

NaN/Inf in a factor propagate into the diagonal of its Gram matrix (a sum of squares), so
the check is made there, on ``r`` numbers per factor instead of on every element.
``method="qr"``, and the matrices that ``auto`` sends back to QR, are read again and done by
QR on their own.

:func:`analyse` can keep the Gram matrices it used, so that ``compress`` refactorises from
them without a second factorisation (:mod:`lora_audit.engine.refactorisation`).

Chunks for the CUDA path come from :func:`lora_audit.engine.batches.map_groups`; the device
from :mod:`lora_audit.engine.device`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from lora_audit.adapter import Adapter, LoraLayer, Structure
from lora_audit.engine.batches import Progress, Warn, _non_finite, group_layers, map_groups
from lora_audit.engine.device import EngineOptions, device_type
from lora_audit.engine.host_buffers import Readers, cpu_pool, cpu_workers
from lora_audit.errors import InputError
from lora_audit.linalg.spectral import (
    GRAM_RELATIVE_TOLERANCE,
    Method,
    gram_singular_values,
    qr_singular_values,
    singular_values,
)

if TYPE_CHECKING:
    from concurrent.futures import Future

    import torch

R = TypeVar("R")


Float64Array = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class Grams:
    """One layer's unscaled Gram matrices, float64 of shape (r, r): ``BᵀB`` and ``A·Aᵀ``."""

    b: Float64Array
    a: Float64Array


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """What one pass over an adapter found.

    Attributes
    ----------
    sigmas
        Singular values of every layer's ``ΔW = scale·B·A``, by layer name: float64 of shape
        (rank,), descending, zero-padded.
    grams
        With ``keep_grams``, the Gram matrices of the layers whose spectrum the Gram method
        gave (and ``auto`` accepted); compression reuses them instead of refactorising.
    """

    sigmas: dict[str, Float64Array]
    grams: dict[str, Grams]


def spectra(
    adapter: Adapter,
    *,
    options: EngineOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> dict[str, Float64Array]:
    """Singular values of every layer's ``ΔW = scale·B·A``, by layer name.

    Returns
    -------
    dict of str to ndarray of shape (rank,), float64, descending, zero-padded.
    """
    return analyse(adapter, options=options, progress=progress, warn=warn).sigmas


def analyse(
    adapter: Adapter,
    *,
    options: EngineOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
    keep_grams: bool = False,
) -> Analysis:
    """Spectra of every layer, and on request the Gram matrices they came from."""
    kron = [layer for layer in adapter.layers if layer.structure is Structure.KRON]
    thin = replace(adapter, layers=tuple(x for x in adapter.layers if x not in kron))
    grams: dict[str, Grams] | None = {} if keep_grams else None
    if device_type(options.device) == "cuda":
        sigmas = _spectra_cuda(thin, options=options, progress=progress, warn=warn, grams=grams)
    else:
        sigmas = _spectra_cpu(thin, method=options.method, progress=progress, grams=grams)
    sigmas.update(_spectra_kron(adapter, kron, progress=progress))
    scaled = {layer.name: abs(layer.scale) * sigmas[layer.name] for layer in adapter.layers}
    return Analysis(sigmas=scaled, grams=grams or {})


def _spectra_kron(
    adapter: Adapter, layers: Sequence[LoraLayer], *, progress: Progress | None
) -> dict[str, Float64Array]:
    """LoKr layers with a full ``W2``: σ(kron(W1, W2)) = σ(W1)⊗σ(W2), two small SVDs each."""
    if not layers:
        return {}
    from lora_audit.adapter import kron_w1, kron_w2
    from lora_audit.linalg.spectral import kron_singular_values

    out: dict[str, Float64Array] = {}
    for layer in layers:
        f = adapter.load_tensors(layer)
        w1, w2 = kron_w1(f), kron_w2(f)
        if not (np.isfinite(w1).all() and np.isfinite(w2).all()):
            raise _non_finite(adapter, next(iter(layer.keys.values())))
        out[layer.name] = kron_singular_values(w1, w2, rank=layer.rank)
        if progress is not None:
            progress(1)
    return out


def _spectra_cpu(
    adapter: Adapter,
    *,
    method: Method,
    progress: Progress | None,
    grams: dict[str, Grams] | None = None,
) -> dict[str, Float64Array]:
    """Unscaled spectra on the CPU, layer by layer (see the module docstring).

    Layers are handed to a few threads, each with its own reader and buffers: numpy and
    the file reads release the GIL, and two layers' ``syrk`` calls side by side use the
    cores better than one call's own threading does for these thin shapes. ``grams``, when
    given, receives the Gram matrices of the layers done by the Gram method.
    """
    results: dict[str, Float64Array] = {}
    readers = Readers(adapter)
    workers = cpu_workers()
    tick = progress if progress is not None else (lambda n: None)

    def by_qr(layer: LoraLayer) -> Float64Array:
        return qr_singular_values(*readers.load(layer))

    def fill_grams(job: tuple[LoraLayer, Float64Array, Float64Array]) -> None:
        layer, gram_b, gram_a = job
        b, a = readers.load(layer)
        np.matmul(b.T, b, out=gram_b)  # syrk: numpy sees the shared operand
        np.matmul(a, a.T, out=gram_a)

    with readers, cpu_pool() as pool:
        for group in group_layers(adapter.layers):
            if method == "qr":
                for layer, sigma in zip(group, pool.map(by_qr, group), strict=True):
                    results[layer.name] = sigma
                    tick(1)
                continue
            r = group[0].rank
            gram_b = np.empty((len(group), r, r))
            gram_a = np.empty((len(group), r, r))
            jobs = [(layer, gram_b[i], gram_a[i]) for i, layer in enumerate(group)]
            for _ in pool.map(fill_grams, jobs):
                tick(1)
            step = -(-len(group) // workers)
            parts = [
                (group[k : k + step], gram_b[k : k + step], gram_a[k : k + step])
                for k in range(0, len(group), step)
            ]
            for done in pool.map(lambda p: _finish(adapter, *p, method=method), parts):
                results.update(done)
            if grams is not None:
                _keep(grams, group, gram_b, gram_a, done=results)
            redo = [layer for layer in group if layer.name not in results]
            for layer, sigma in zip(redo, pool.map(by_qr, redo), strict=True):
                results[layer.name] = sigma
    return results


def _keep(
    grams: dict[str, Grams],
    group: Sequence[LoraLayer],
    gram_b: Float64Array,
    gram_a: Float64Array,
    *,
    done: dict[str, Float64Array],
) -> None:
    """Record the Grams of the layers of ``group`` whose spectrum they gave."""
    for i, layer in enumerate(group):
        if layer.name in done:
            grams[layer.name] = Grams(b=gram_b[i], a=gram_a[i])


def _finish(
    adapter: Adapter,
    group: Sequence[LoraLayer],
    gram_b: Float64Array,
    gram_a: Float64Array,
    *,
    method: Method,
) -> dict[str, Float64Array]:
    """Spectra from one group's Grams; layers that ``auto`` must redo by QR are left out.

    Raises
    ------
    InputError
        When a factor holds NaN or Inf (seen on the Gram diagonals).
    """
    _check_grams(adapter, group, gram_b, gram_a)
    sigma, error_bound = gram_singular_values(gram_b, gram_a)
    keep = np.ones(len(group), dtype=bool)
    if method == "auto":
        keep = ~((error_bound > GRAM_RELATIVE_TOLERANCE * sigma[:, 0]) & (error_bound > 0))
    return {layer.name: sigma[i] for i, layer in enumerate(group) if keep[i]}


def _check_grams(
    adapter: Adapter, group: Sequence[LoraLayer], gram_b: Float64Array, gram_a: Float64Array
) -> None:
    """Raise for the first layer whose Gram diagonal (sums of squares) is not finite."""
    finite_b = np.isfinite(np.einsum("nii->ni", gram_b)).all(axis=1)
    finite_a = np.isfinite(np.einsum("nii->ni", gram_a)).all(axis=1)
    for i in np.flatnonzero(~(finite_b & finite_a)):
        layer = group[int(i)]
        b, a = adapter.load_factors(layer)
        for key, factor in ((layer.b_key, b), (layer.a_key, a)):
            if not np.isfinite(factor).all():
                raise _non_finite(adapter, key)
        raise InputError(
            f"{adapter.tensor_file}: layer {layer.name!r} has values too large to square in "
            "float64",
            hint="the file is corrupt or not a trained adapter",
        )


def _spectra_cuda(
    adapter: Adapter,
    *,
    options: EngineOptions,
    progress: Progress | None,
    warn: Warn | None,
    grams: dict[str, Grams] | None = None,
) -> dict[str, Float64Array]:
    """Unscaled spectra with the Gram products on the GPU (see the module docstring)."""
    from concurrent.futures import ThreadPoolExecutor

    if options.method == "qr":
        return _qr_on_device(adapter, options=options, progress=progress, warn=warn)

    def gram_batch(
        layers: Sequence[LoraLayer], b: torch.Tensor, a: torch.Tensor
    ) -> list[tuple[Float64Array, Float64Array]]:
        gram_b = (b.mT @ b).cpu().numpy()
        gram_a = (a @ a.mT).cpu().numpy()
        return [(gram_b[i], gram_a[i]) for i in range(len(layers))]

    # map_groups warns only when it gives up on the GPU (out of memory at one layer); the
    # groups after that one go to the CPU path instead of trying the GPU again.
    on_cpu = False

    def fall_back(message: str) -> None:
        nonlocal on_cpu
        on_cpu = True
        if warn is not None:
            warn(message)

    results: dict[str, Float64Array] = {}
    pending: list[
        tuple[Future[dict[str, Float64Array]], tuple[list[LoraLayer], Float64Array, Float64Array]]
    ] = []
    with ThreadPoolExecutor(max_workers=1) as host:
        for group in group_layers(adapter.layers):
            part = replace(adapter, layers=tuple(group))
            if on_cpu:
                results.update(
                    _spectra_cpu(part, method=options.method, progress=progress, grams=grams)
                )
                continue
            done = map_groups(part, gram_batch, options=options, progress=progress, warn=fall_back)
            gram_b = np.stack([done[layer.name][0] for layer in group])
            gram_a = np.stack([done[layer.name][1] for layer in group])
            pending.append(
                (
                    host.submit(_finish, adapter, group, gram_b, gram_a, method=options.method),
                    (group, gram_b, gram_a),
                )
            )
        for future, (group, gram_b, gram_a) in pending:
            done_group = future.result()
            results.update(done_group)
            if grams is not None:
                _keep(grams, group, gram_b, gram_a, done=done_group)
    redo = [layer for layer in adapter.layers if layer.name not in results]
    if redo:
        part = replace(adapter, layers=tuple(redo))
        if on_cpu:
            results.update(_spectra_cpu(part, method="qr", progress=None))
        else:
            results.update(_qr_on_device(part, options=options, progress=None, warn=warn))
    return results


def _qr_on_device(
    adapter: Adapter,
    *,
    options: EngineOptions,
    progress: Progress | None,
    warn: Warn | None,
) -> dict[str, Float64Array]:

    def batch(layers: Sequence[LoraLayer], b: torch.Tensor, a: torch.Tensor) -> list[Float64Array]:
        sigma = singular_values(b, a, method="qr").cpu().numpy()
        return [sigma[i] for i in range(len(layers))]

    return map_groups(adapter, batch, options=options, progress=progress, warn=warn)
