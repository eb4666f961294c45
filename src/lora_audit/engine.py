"""Run the spectral math over an adapter: group equal shapes, stream, batch, pick a device.

Layers are grouped by ``(out, r, in)``. :func:`spectra` has two paths:

* **CPU** (numpy only; torch is not even imported for a safetensors file). Each layer is
  read with one ``read`` into a reused buffer, converted to float64 into another reused
  buffer, and reduced at once to its two ``r×r`` Gram matrices (``BᵀB``, ``A·Aᵀ``, BLAS
  ``syrk``); the ``r×r`` work (:func:`~lora_audit.spectral.gram_singular_values`) is batched
  per group. Nothing larger than one layer is ever held upcast, so memory stays flat
  whatever the size of the adapter, and the file is read exactly once.
* **CUDA** (torch): :func:`map_groups` copies the stored bytes of a chunk of layers to the
  GPU, converts them there, and forms the Gram matrices on the device; only the ``r×r``
  Grams come back, and they are finished on the host by the same numpy code as on the CPU,
  in a worker thread, while the next group is being copied.

NaN/Inf in a factor propagate into the diagonal of its Gram matrix (a sum of squares), so
the check is made there, on ``r`` numbers per factor instead of on every element.
``method="qr"``, and the matrices that ``auto`` sends back to QR, are read again and done by
QR on their own.

:func:`map_groups` is the general tool for batch functions that need the factors themselves
(compression): chunks sized to a memory budget, upcast to float64 on the compute device,
checked for NaN/Inf, and handed to the function. Only one chunk is held upcast at a time. On
CUDA, an out-of-memory error halves the chunk, and at one layer falls back to the CPU with a
warning.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from lora_audit.adapter import Adapter, LoraLayer, Structure
from lora_audit.errors import InputError, UsageError
from lora_audit.formats.safetensors_io import SafetensorsSource
from lora_audit.spectral import (
    GRAM_RELATIVE_TOLERANCE,
    Method,
    gram_singular_values,
    qr_singular_values,
    singular_values,
)

if TYPE_CHECKING:
    from concurrent.futures import Future

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


def device_type(name: DeviceName) -> Literal["cpu", "cuda"]:
    """``resolve_device(name).type``, without importing torch when no GPU can be present.

    ``auto`` is the CPU without asking torch when the platform shows no GPU driver (no
    ``/dev/nvidiactl``, ``/proc/driver/nvidia``, ``/dev/kfd`` or ``/dev/dxg`` on Linux;
    always on macOS); otherwise torch decides, as in :func:`resolve_device`.
    """
    if name == "cpu" or (name == "auto" and not _gpu_possible()):
        return "cpu"
    return "cuda" if resolve_device(name).type == "cuda" else "cpu"


def _gpu_possible() -> bool:
    if "torch" in sys.modules:
        return True  # already paid for: let torch answer
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        markers = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
        return any(os.path.exists(m) for m in markers)
    return True


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
        b_i, a_i = adapter.load_factors(layer)
        b[i].copy_(b_i.to(device, non_blocking=True))
        a[i].copy_(a_i.to(device, non_blocking=True))
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


def _non_finite(adapter: Adapter, key: str) -> InputError:
    return InputError(
        f"{adapter.tensor_file}: tensor {key!r} contains NaN or Inf",
        hint="the training run diverged or the file is corrupt; use an earlier checkpoint",
    )


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
    kron = [layer for layer in adapter.layers if layer.structure is Structure.KRON]
    thin = replace(adapter, layers=tuple(x for x in adapter.layers if x not in kron))
    if device_type(options.device) == "cuda":
        sigmas = _spectra_cuda(thin, options=options, progress=progress, warn=warn)
    else:
        sigmas = _spectra_cpu(thin, method=options.method, progress=progress)
    sigmas.update(_spectra_kron(adapter, kron, progress=progress))
    return {layer.name: abs(layer.scale) * sigmas[layer.name] for layer in adapter.layers}


def _spectra_kron(
    adapter: Adapter, layers: Sequence[LoraLayer], *, progress: Progress | None
) -> dict[str, Float64Array]:
    """LoKr layers with a full ``W2``: σ(kron(W1, W2)) = σ(W1)⊗σ(W2), two small SVDs each."""
    if not layers:
        return {}
    import torch

    from lora_audit.adapter import kron_w1, kron_w2
    from lora_audit.spectral import kron_singular_values

    out: dict[str, Float64Array] = {}
    for layer in layers:
        f = {role: t.to(torch.float64) for role, t in adapter.load_tensors(layer).items()}
        w1, w2 = kron_w1(f), kron_w2(f)
        if not (bool(torch.isfinite(w1).all()) and bool(torch.isfinite(w2).all())):
            raise _non_finite(adapter, next(iter(layer.keys.values())))
        out[layer.name] = kron_singular_values(w1, w2, rank=layer.rank).numpy()
        if progress is not None:
            progress(1)
    return out


Float64Array = npt.NDArray[np.float64]


def _spectra_cpu(
    adapter: Adapter, *, method: Method, progress: Progress | None
) -> dict[str, Float64Array]:
    """Unscaled spectra on the CPU, layer by layer (see the module docstring).

    Layers are handed to a few threads, each with its own reader and buffers: numpy and
    the file reads release the GIL, and two layers' ``syrk`` calls side by side use the
    cores better than one call's own threading does for these thin shapes.
    """
    from concurrent.futures import ThreadPoolExecutor

    results: dict[str, Float64Array] = {}
    readers = _Readers(adapter)
    workers = _cpu_workers()
    tick = progress if progress is not None else (lambda n: None)
    with readers, ThreadPoolExecutor(max_workers=workers) as pool:
        for group in group_layers(adapter.layers):
            if method == "qr":
                for layer, sigma in zip(group, pool.map(readers.qr, group), strict=True):
                    results[layer.name] = sigma
                    tick(1)
                continue
            r = group[0].rank
            gram_b = np.empty((len(group), r, r))
            gram_a = np.empty((len(group), r, r))
            jobs = [(layer, gram_b[i], gram_a[i]) for i, layer in enumerate(group)]
            for _ in pool.map(readers.grams, jobs):
                tick(1)
            step = -(-len(group) // workers)
            parts = [
                (group[k : k + step], gram_b[k : k + step], gram_a[k : k + step])
                for k in range(0, len(group), step)
            ]
            for done in pool.map(lambda p: _finish(adapter, *p, method=method), parts):
                results.update(done)
            redo = [layer for layer in group if layer.name not in results]
            for layer, sigma in zip(redo, pool.map(readers.qr, redo), strict=True):
                results[layer.name] = sigma
    return results


def _cpu_workers() -> int:
    """Threads for the CPU path: one per core, at most four."""
    return max(1, min(4, os.cpu_count() or 1))


class _Readers:
    """One :class:`_HostFactors` per thread; closes them all on exit."""

    def __init__(self, adapter: Adapter) -> None:
        self._adapter = adapter
        self._local = threading.local()
        self._all: list[_HostFactors] = []
        self._lock = threading.Lock()  # for Adapter.load_factors (torch, lazy handles)

    def __enter__(self) -> _Readers:
        return self

    def __exit__(self, *exc: object) -> None:
        for reader in self._all:
            reader.close()

    def _reader(self) -> _HostFactors:
        reader: _HostFactors | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = _HostFactors(self._adapter, lock=self._lock)
            self._all.append(reader)
        return reader

    def grams(self, job: tuple[LoraLayer, Float64Array, Float64Array]) -> None:
        """Write ``BᵀB`` and ``A·Aᵀ`` of one layer into the given ``r×r`` arrays."""
        layer, gram_b, gram_a = job
        b, a = self._reader().load(layer)
        np.matmul(b.T, b, out=gram_b)  # syrk: numpy sees the shared operand
        np.matmul(a, a.T, out=gram_a)

    def qr(self, layer: LoraLayer) -> Float64Array:
        """One layer's unscaled spectrum by QR."""
        return qr_singular_values(*self._reader().load(layer))


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
            if not bool(factor.isfinite().all()):
                raise _non_finite(adapter, key)
        raise InputError(
            f"{adapter.tensor_file}: layer {layer.name!r} has values too large to square in "
            "float64",
            hint="the file is corrupt or not a trained adapter",
        )


_NUMPY_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


class _HostFactors:
    """Each layer's ``(B, A)`` as float64 numpy arrays, in buffers reused from layer to layer.

    Plain LoRA layers of a safetensors file are read straight from it (one ``readinto`` per
    tensor; no memory map, so nothing of the file stays resident) and converted without
    torch: bf16 is the upper half of a float32. Other layers and other sources go through
    :meth:`Adapter.load_factors`. The arrays returned are overwritten by the next ``load``.
    """

    def __init__(self, adapter: Adapter, *, lock: threading.Lock | None = None) -> None:
        self._adapter = adapter
        source = adapter.source
        self._raw = source if isinstance(source, SafetensorsSource) else None
        self._file: Any = None
        self._data_start = 0
        self._buffers: dict[tuple[str, tuple[int, ...]], npt.NDArray[Any]] = {}
        self._group: tuple[int, int, int] | None = None
        self._lock = lock or threading.Lock()

    def close(self) -> None:
        """Close the file (the reader can be used again; it reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def load(self, layer: LoraLayer) -> tuple[Float64Array, Float64Array]:
        """``B`` of shape (out, r) and ``A`` of shape (r, in), float64, C-contiguous."""
        if layer.group_key != self._group:  # buffers of the previous shape are not needed
            self._buffers.clear()
            self._group = layer.group_key
        shape_b = (layer.out_features, layer.rank)
        shape_a = (layer.rank, layer.in_features)
        if self._raw is None or layer.structure is not Structure.LORA:
            with self._lock:
                b_t, a_t = self._adapter.load_factors(layer)
            b, a = self._buffer("b", shape_b, "<f8"), self._buffer("a", shape_a, "<f8")
            np.copyto(b, _to_numpy(b_t))
            np.copyto(a, _to_numpy(a_t))
            return b, a
        return self._read(layer.b_key, "b", shape_b), self._read(layer.a_key, "a", shape_a)

    def _buffer(self, slot: str, shape: tuple[int, ...], dtype: str) -> npt.NDArray[Any]:
        key = (f"{slot}:{dtype}", shape)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = np.empty(shape, dtype=dtype)
        return buf

    def _read(self, key: str, slot: str, shape: tuple[int, int]) -> Float64Array:
        assert self._raw is not None
        info = self._raw.header.tensors[key]
        count = shape[0] * shape[1]
        if math.prod(info.shape) != count:  # the reader validated this; be explicit
            raise InputError(f"{self._raw.path}: tensor {key!r} has shape {list(info.shape)}")
        raw = self._buffer("raw", (info.end - info.start,), "u1")
        self._readinto(raw, info.start, key)
        out: Float64Array = self._buffer(slot, shape, "<f8")
        flat = out.reshape(-1)
        if info.dtype == "BF16":
            wide = self._buffer("u32", (count,), "<u4")
            np.left_shift(raw.view("<u2"), 16, out=wide, dtype=np.uint32)
            np.copyto(flat, wide.view("<f4"))
        else:
            np.copyto(flat, raw.view(_NUMPY_DTYPES[info.dtype]))
        return out

    def _readinto(self, raw: npt.NDArray[Any], start: int, key: str) -> None:
        assert self._raw is not None
        path = self._raw.path
        try:
            if self._file is None:
                self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed in __exit__)
                self._data_start = 8 + int.from_bytes(self._file.read(8), "little")
            self._file.seek(self._data_start + start)
            view = raw.data.cast("B")
            done = 0
            while done < len(view):
                n = self._file.readinto(view[done:])
                if not n:
                    raise InputError(
                        f"{path}: tensor {key!r} runs past the end of the file",
                        hint="the file was truncated while being read",
                    )
                done += n
        except OSError as exc:
            raise InputError(f"{path}: cannot read tensor {key!r}: {exc.strerror or exc}") from exc


def _to_numpy(t: torch.Tensor) -> Float64Array:
    import torch

    array: Float64Array = t.detach().to(device="cpu", dtype=torch.float64).numpy()
    return array


def _spectra_cuda(
    adapter: Adapter,
    *,
    options: EngineOptions,
    progress: Progress | None,
    warn: Warn | None,
) -> dict[str, Float64Array]:
    """Unscaled spectra with the Gram products on the GPU (see the module docstring)."""
    from concurrent.futures import ThreadPoolExecutor

    if options.method == "qr":
        return _qr_on_device(adapter, options=options, progress=progress, warn=warn)

    def grams(
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
    pending: list[Future[dict[str, Float64Array]]] = []
    with ThreadPoolExecutor(max_workers=1) as host:
        for group in group_layers(adapter.layers):
            part = replace(adapter, layers=tuple(group))
            if on_cpu:
                results.update(_spectra_cpu(part, method=options.method, progress=progress))
                continue
            done = map_groups(part, grams, options=options, progress=progress, warn=fall_back)
            gram_b = np.stack([done[layer.name][0] for layer in group])
            gram_a = np.stack([done[layer.name][1] for layer in group])
            pending.append(
                host.submit(_finish, adapter, group, gram_b, gram_a, method=options.method)
            )
        for future in pending:
            results.update(future.result())
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
