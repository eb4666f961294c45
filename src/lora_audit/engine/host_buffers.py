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
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from lora_audit.adapter import Adapter, LoraLayer, ReadsIntoBuffers, Structure

_T = TypeVar("_T")
Float64Array = npt.NDArray[np.float64]


#: Most worker threads the CPU paths start.
MAX_WORKERS = 8

#: Threads one adapter's CPU path may use while several adapters are audited side by side
#: (:func:`cpu_share`); ``None``: all of :func:`cpu_workers`.
_SHARE: ContextVar[int | None] = ContextVar("lora_audit_cpu_share", default=None)


def cpu_cores() -> int:
    """Cores this process may use, at most ``MAX_WORKERS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def cpu_workers() -> int:
    """Threads for the CPU paths: one per core this process may use, at most ``MAX_WORKERS``,
    or the share :func:`cpu_share` gave the calling thread."""
    share = _SHARE.get()
    return cpu_cores() if share is None else max(1, min(share, cpu_cores()))


@contextmanager
def cpu_share(threads: int) -> Iterator[None]:
    """In the calling thread, the CPU paths start at most ``threads`` worker threads.

    Several adapters audited at once each get a share of the cores, so that together they
    start no more threads than :func:`cpu_cores` (no oversubscription).
    """
    token = _SHARE.set(max(1, threads))
    try:
        yield
    finally:
        _SHARE.reset(token)


_BLAS_LOCK = threading.Lock()
_BLAS_USERS: list[Any] = []  # the limiter of the first user; one entry per user


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS single-threaded while any caller is inside (process-wide; safe across threads:
    the original limits come back when the last caller leaves)."""
    from threadpoolctl import threadpool_limits

    with _BLAS_LOCK:
        limiter = _BLAS_USERS[0] if _BLAS_USERS else threadpool_limits(limits=1, user_api="blas")
        _BLAS_USERS.append(limiter)
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS.pop()
            if not _BLAS_USERS:
                limiter.restore_original_limits()


@contextmanager
def cpu_pool() -> Iterator[Executor]:
    """A pool of :func:`cpu_workers` threads, with BLAS single-threaded while it is open.

    The CPU paths run one layer per thread; each layer's BLAS calls are small (thin factors
    times ``r×r`` or ``r×k`` matrices). OpenBLAS's own threads spin-wait between calls, so
    letting every worker's calls fan out again over all cores makes them fight: on 2 cores
    the compress refactorisation ran 2.2× slower with OpenBLAS's default threading than with
    one BLAS thread per worker (``bench/bench.py``). The limit is process-wide and is lifted
    when the last pool closes. With one worker the jobs run in the calling thread
    (:class:`InlineExecutor`): starting a thread per adapter was a third of the cost of a small
    adapter when many are audited side by side.
    """
    from concurrent.futures import ThreadPoolExecutor

    workers = cpu_workers()
    if workers == 1 and _SHARE.get() is None:
        yield InlineExecutor()
        return
    if workers == 1:
        with single_threaded_blas():
            yield InlineExecutor()
        return
    with single_threaded_blas(), ThreadPoolExecutor(workers) as pool:
        yield pool


class InlineExecutor(Executor):
    """An executor that runs each job at once in the calling thread (one worker, no thread)."""

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` now; its result (or exception) in a finished future."""
        future: Future[_T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # re-raised by future.result(), as a pool would
            future.set_exception(exc)
        return future


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
