"""Each layer's factors as float64 numpy arrays on the host, read with as little work as possible.

:class:`HostFactors` reads the two factors of one layer into buffers it reuses from layer to
layer (nothing larger than one layer is ever held upcast); :class:`Readers` gives each worker
thread its own. The CPU paths of :mod:`lora_audit.engine.spectra` (spectra) and
:mod:`lora_audit.engine.refactorisation` (compression) stream an adapter through them.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from lora_audit.adapter import Adapter, LoraLayer, ReadsIntoBuffers, Structure

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

Float64Array = npt.NDArray[np.float64]


#: Most worker threads the CPU paths start.
MAX_WORKERS = 8


def cpu_workers() -> int:
    """Threads for the CPU paths: one per core this process may use, at most ``MAX_WORKERS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


@contextmanager
def cpu_pool() -> Iterator[ThreadPoolExecutor]:
    """A pool of :func:`cpu_workers` threads, with BLAS single-threaded while it is open.

    The CPU paths run one layer per thread; each layer's BLAS calls are small (thin factors
    times ``r×r`` or ``r×k`` matrices). OpenBLAS's own threads spin-wait between calls, so
    letting every worker's calls fan out again over all cores makes them fight: on 2 cores
    the compress refactorisation ran 2.2× slower with OpenBLAS's default threading than with
    one BLAS thread per worker (``bench/bench.py``). The limit is process-wide and is lifted
    when the pool closes.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    workers = cpu_workers()
    if workers == 1:
        with ThreadPoolExecutor(max_workers=1) as pool:
            yield pool
        return
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        yield pool


class Readers:
    """One :class:`HostFactors` per thread; closes them all on exit."""

    def __init__(self, adapter: Adapter) -> None:
        self._adapter = adapter
        self._local = threading.local()
        self._all: list[HostFactors] = []
        self._lock = threading.Lock()  # for Adapter.load_factors (sources need not be thread-safe)

    def __enter__(self) -> Readers:
        return self

    def __exit__(self, *exc: object) -> None:
        for reader in self._all:
            reader.close()

    def _reader(self) -> HostFactors:
        reader: HostFactors | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = HostFactors(self._adapter, lock=self._lock)
            self._all.append(reader)
        return reader

    def load(self, layer: LoraLayer) -> tuple[Float64Array, Float64Array]:
        """This thread's :meth:`HostFactors.load` (its buffers are reused by its next call)."""
        return self._reader().load(layer)


class HostFactors:
    """Each layer's ``(B, A)`` as float64 numpy arrays, in buffers reused from layer to layer.

    Plain LoRA layers of a source that can stream into buffers (a safetensors file:
    :class:`~lora_audit.adapter.ReadsIntoBuffers`) are decoded straight into them; other
    layers and other sources go through :meth:`Adapter.load_factors`. The arrays returned are
    overwritten by the next ``load``.
    """

    def __init__(self, adapter: Adapter, *, lock: threading.Lock | None = None) -> None:
        self._adapter = adapter
        source = adapter.source
        self._raw = source.open_reader() if isinstance(source, ReadsIntoBuffers) else None
        self._buffers: dict[tuple[str, tuple[int, ...]], Float64Array] = {}
        self._group: tuple[int, int, int] | None = None
        self._lock = lock or threading.Lock()

    def close(self) -> None:
        """Close the file (the reader can be used again; it reopens it)."""
        if self._raw is not None:
            self._raw.close()

    def load(self, layer: LoraLayer) -> tuple[Float64Array, Float64Array]:
        """``B`` of shape (out, r) and ``A`` of shape (r, in), float64, C-contiguous."""
        if layer.group_key != self._group:  # buffers of the previous shape are not needed
            self._buffers.clear()
            self._group = layer.group_key
        b = self._buffer("b", (layer.out_features, layer.rank))
        a = self._buffer("a", (layer.rank, layer.in_features))
        if self._raw is None or layer.structure is not Structure.LORA:
            with self._lock:
                b_t, a_t = self._adapter.load_factors(layer)
            np.copyto(b, b_t)
            np.copyto(a, a_t)
        else:
            self._raw.read_into(layer.b_key, b)
            self._raw.read_into(layer.a_key, a)
        if "F64" in layer.dtype:  # only float64 can hold values whose squares overflow
            balance(b, a)
        return b, a

    def _buffer(self, slot: str, shape: tuple[int, int]) -> Float64Array:
        key = (slot, shape)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = np.empty(shape, dtype=np.float64)
        return buf


#: Factors whose largest magnitude lies outside [2⁻³⁰⁰, 2³⁰⁰] are balanced before Grams.
_SAFE_EXPONENT = 300


def balance(b: Float64Array, a: Float64Array) -> None:
    """Scale ``B`` by 2⁻ᵏ and ``A`` by 2ᵏ in place so their largest magnitudes meet.

    ``B·A`` is unchanged — multiplying by a power of two is exact — but the Gram matrices
    ``BᵀB`` and ``AAᵀ`` of float64 factors with a huge dynamic range (``B·1e-200``,
    ``A·1e200``) no longer underflow or overflow although the product is moderate. Factors
    already in a safe range, zero or non-finite ones (reported later) are left as they are.

    Parameters
    ----------
    b : ndarray, float64, shape (out, r)
    a : ndarray, float64, shape (r, in)
    """
    if b.size == 0 or a.size == 0:
        return
    top_b, top_a = float(np.abs(b).max()), float(np.abs(a).max())
    if not (math.isfinite(top_b) and math.isfinite(top_a)) or top_b == 0 or top_a == 0:
        return
    exp_b, exp_a = math.frexp(top_b)[1], math.frexp(top_a)[1]
    if max(abs(exp_b), abs(exp_a)) <= _SAFE_EXPONENT:
        return
    k = (exp_b - exp_a) // 2
    np.ldexp(b, -k, out=b)
    np.ldexp(a, k, out=a)
