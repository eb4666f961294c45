"""Reading safetensors files without trusting them, and writing them atomically.

The header is parsed and validated here before any tensor is touched, so that a truncated,
hostile or malformed file ends in one :class:`~lora_audit.errors.InputError` naming the
file (and tensor) instead of a traceback. Tensor data is then read lazily through the
``safetensors`` library's memory map, or as raw bytes (:meth:`SafetensorsSource.raw`).

Writing needs neither torch nor the ``safetensors`` library: :class:`StoredTensor` is a
tensor as it is stored (dtype name, shape, little-endian bytes) and :func:`write_safetensors`
lays them out as the format specifies — an 8-byte little-endian header length, the JSON
header padded with spaces to a multiple of 8 bytes, then the data, tensors ordered by
element size (largest first, as the ``safetensors`` library does) so that every tensor is
aligned to its element size.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lora_audit.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

#: Largest header accepted, in bytes. Real adapters have headers of a few hundred KiB.
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: Most tensors a header may list. The largest adapters hold ~10⁵ (a LoRA on every expert of
#: a 256-expert MoE: 58 layers × 256 experts × 3 projections × 2 factors ≈ 89,000); parsing,
#: validating and naming each entry costs ~1 kB and ~20 µs, so a header of a million tiny
#: entries (75 MB of JSON) would take half a minute and a gigabyte before any warning.
MAX_TENSORS = 250_000

#: Bytes per element of every dtype safetensors defines.
DTYPE_SIZES: Mapping[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

#: Dtypes a LoRA factor may have.
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's entry in the header: dtype, shape and byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    """A validated safetensors header."""

    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]
    #: Offset of the data section in the file (8 + the header length).
    data_start: int = 0


def read_header(path: Path) -> Header:
    """Read and validate the header of a safetensors file.

    Raises
    ------
    InputError
        If the file is too short, its header length runs past the end of the file or over
        :data:`MAX_HEADER_BYTES`, the header is not a JSON object, a dtype is unknown, a
        shape or byte range is malformed, out of range or overlaps another.
    """
    from lora_audit.formats.config_files import parse_json, require_regular

    fd = require_regular(path, what="safetensors file")
    try:
        with os.fdopen(fd, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise InputError(
                    f"{path}: file is {size} bytes, too short to be safetensors",
                    hint="the file is empty or truncated; download or save it again",
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES:
                raise InputError(
                    f"{path}: header claims {header_len} bytes, over the "
                    f"{MAX_HEADER_BYTES // (1024 * 1024)} MiB limit",
                    hint="this is not a valid safetensors file",
                )
            if 8 + header_len > size:
                raise InputError(
                    f"{path}: header length {header_len} runs past the end of the {size}-byte file",
                    hint="the file is truncated or not safetensors; download or save it again",
                )
            raw = fh.read(header_len)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    _refuse_too_many(path, raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: header is not valid JSON ({exc.__class__.__name__})",
            hint="the file is corrupt or not safetensors",
        ) from exc
    parsed = parse_json(text, where=f"{path}: header")
    if not isinstance(parsed, dict):
        raise InputError(f"{path}: header is not a JSON object", hint="not a safetensors file")
    header = _validate(path, parsed, data_len=size - 8 - header_len)
    return Header(tensors=header.tensors, metadata=header.metadata, data_start=8 + header_len)


def _refuse_too_many(path: Path, raw: bytes) -> None:
    """Refuse, before parsing, a header listing more than :data:`MAX_TENSORS` tensors.

    Every entry has a ``"data_offsets"`` key, and those bytes cannot occur inside a JSON
    string (its quotes would be escaped), so counting them (one C-level scan, ~20 ms for
    75 MB) bounds the entries from above without parsing anything.

    Raises
    ------
    InputError
        Naming the count and the limit.
    """
    entries = raw.count(b'"data_offsets"')
    if entries > MAX_TENSORS:
        raise InputError(
            f"{path}: the header lists {entries:,} tensors, more than any adapter holds "
            f"(limit {MAX_TENSORS:,}); not read",
            hint="this is not a LoRA adapter, or it was crafted; audit the adapter's own file",
        )


def _validate(path: Path, parsed: dict[str, Any], *, data_len: int) -> Header:
    metadata_raw = parsed.pop("__metadata__", None)
    if metadata_raw is None:  # absent, or null (the safetensors library accepts both)
        metadata_raw = {}
    if not isinstance(metadata_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata_raw.items()
    ):
        raise InputError(f"{path}: __metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for key, entry in parsed.items():
        where = f"{path}: tensor {key!r}"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise InputError(
                f"{where}: unknown dtype {dtype!r}",
                hint=f"known dtypes: {', '.join(sorted(DTYPE_SIZES))}",
            )
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InputError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise InputError(
                f"{where}: data offsets {offsets!r} are outside the {data_len}-byte data section",
                hint="the file is truncated or corrupt",
            )
        nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
        if offsets[1] - offsets[0] != nbytes:
            raise InputError(
                f"{where}: {offsets[1] - offsets[0]} bytes stored for shape {shape} {dtype} "
                f"({nbytes} bytes)",
                hint="the file is corrupt",
            )
        tensors[key] = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    spans = sorted((t.start, t.end, k) for k, t in tensors.items() if t.end > t.start)
    for (_, end_a, key_a), (start_b, _, key_b) in itertools.pairwise(spans):
        if start_b < end_a:
            raise InputError(
                f"{path}: tensors {key_a!r} and {key_b!r} overlap in the data section",
                hint="the file is corrupt or crafted",
            )
    return Header(tensors=tensors, metadata=dict(metadata_raw))


class SafetensorsSource:
    """Lazy, memory-mapped access to the tensors of a validated safetensors file."""

    def __init__(self, path: Path, header: Header) -> None:
        self.path = path
        self.header = header
        #: Keys whose bytes were read from the file (by :meth:`raw`, :meth:`get` or a
        #: :class:`BufferedReader`): what :mod:`~lora_audit.formats.accounted` counts as read.
        self.materialised: set[str] = set()

    def get(self, key: str) -> npt.NDArray[Any]:
        """Tensor ``key`` as a numpy array: F16/F32/F64 and integers as stored, BF16 as float32.

        BF16 is widened exactly (it is the upper half of a float32). The array is a fresh
        copy read from the file; nothing of the file stays mapped.
        """
        return decode(self.raw(key), where=f"{self.path}: tensor {key!r}")

    def raw(self, key: str) -> StoredTensor:
        """Tensor ``key`` as stored: its bytes, read from the file, and its dtype and shape."""
        info = self.header.tensors[key]
        self.materialised.add(key)
        try:
            with self.path.open("rb", buffering=0) as fh:
                fh.seek(self.header.data_start + info.start)
                data = fh.read(info.end - info.start)
        except OSError as exc:
            raise InputError(
                f"{self.path}: cannot read tensor {key!r}: {exc.strerror or exc}"
            ) from exc
        if len(data) != info.end - info.start:
            raise InputError(
                f"{self.path}: tensor {key!r} runs past the end of the file",
                hint="the file was truncated while being read",
            )
        return StoredTensor(dtype=info.dtype, shape=info.shape, data=data)

    def open_reader(self) -> BufferedReader:
        """A reader that streams tensors into caller buffers (see :class:`BufferedReader`)."""
        return BufferedReader(self)


_NUMPY_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


class BufferedReader:
    """Tensors of one safetensors file decoded into caller-owned float64 buffers.

    One ``readinto`` per tensor into a scratch buffer reused from call to call (no memory map,
    so nothing of the file stays resident), then one conversion without torch: BF16 is the
    upper half of a float32. One reader per thread; :meth:`close` releases the file.
    """

    def __init__(self, source: SafetensorsSource) -> None:
        self._source = source
        self._file: Any = None
        self._scratch: dict[str, npt.NDArray[Any]] = {}

    def close(self) -> None:
        """Close the file (the reader can be used again; it reopens it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def read_into(self, key: str, out: npt.NDArray[np.float64]) -> None:
        """Decode F16/BF16/F32/F64 tensor ``key`` into ``out`` (float64, the same size)."""
        import numpy as np

        info = self._source.header.tensors[key]
        count = math.prod(info.shape)
        if out.size != count or info.dtype not in (*_NUMPY_DTYPES, "BF16"):
            raise InputError(
                f"{self._source.path}: tensor {key!r} ({info.dtype} {list(info.shape)}) "
                f"does not fit a float64 buffer of {out.size} elements"
            )
        raw = self._scratch_of("u1", info.end - info.start)
        self._readinto(raw, info.start, key)
        self._source.materialised.add(key)
        flat = out.reshape(-1)
        if info.dtype == "BF16":
            wide = self._scratch_of("<u4", count)
            np.left_shift(raw.view("<u2"), 16, out=wide, dtype=np.uint32)
            np.copyto(flat, wide.view("<f4"))
        else:
            np.copyto(flat, raw.view(_NUMPY_DTYPES[info.dtype]))

    def _scratch_of(self, dtype: str, count: int) -> npt.NDArray[Any]:
        import numpy as np

        buf = self._scratch.get(dtype)
        if buf is None or buf.size < count:
            buf = self._scratch[dtype] = np.empty(count, dtype=dtype)
        return buf[:count]

    def _readinto(self, raw: npt.NDArray[Any], start: int, key: str) -> None:
        path = self._source.path
        try:
            if self._file is None:
                self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
            self._file.seek(self._source.header.data_start + start)
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


@dataclass(frozen=True)
class StoredTensor:
    """A tensor as safetensors stores it.

    Attributes
    ----------
    dtype
        The safetensors dtype name (``"BF16"``, ``"F32"``, …).
    shape
        The tensor's shape.
    data
        Its elements, little-endian, C order, as any contiguous buffer (``bytes``, a numpy
        array): ``prod(shape) × element size`` bytes.
    """

    dtype: str
    shape: tuple[int, ...]
    data: Any

    @property
    def nbytes(self) -> int:
        """Size of the data in bytes."""
        return memoryview(self.data).nbytes

    def reshape(self, *shape: int) -> StoredTensor:
        """The same data under another shape of the same size."""
        if math.prod(shape) != math.prod(self.shape):
            raise ValueError(f"cannot reshape {list(self.shape)} to {list(shape)}")
        return StoredTensor(dtype=self.dtype, shape=tuple(shape), data=self.data)


#: numpy dtypes of the stored dtypes that numpy reads directly (BF16 is widened by hand).
NUMPY_DTYPES: Mapping[str, str] = {
    "F16": "<f2",
    "F32": "<f4",
    "F64": "<f8",
    "I8": "i1",
    "U8": "u1",
    "I16": "<i2",
    "U16": "<u2",
    "I32": "<i4",
    "U32": "<u4",
    "I64": "<i8",
    "U64": "<u8",
    "BOOL": "?",
}


def decode(tensor: StoredTensor, *, where: str = "tensor") -> npt.NDArray[Any]:
    """A :class:`StoredTensor` as a numpy array of its shape (BF16 widened to float32).

    Raises
    ------
    InputError
        For a dtype numpy cannot hold exactly (the 8-bit floats).
    """
    import numpy as np

    if tensor.dtype == "BF16":
        half = np.frombuffer(tensor.data, dtype="<u2")
        wide = np.left_shift(half.astype(np.uint32), 16).view(np.float32)
        return wide.reshape(tensor.shape)
    numpy_dtype = NUMPY_DTYPES.get(tensor.dtype)
    if numpy_dtype is None:
        raise InputError(f"{where} has dtype {tensor.dtype}, which cannot be read as numbers here")
    return np.frombuffer(tensor.data, dtype=numpy_dtype).reshape(tensor.shape).copy()


def stored_from_numpy(array: npt.NDArray[Any]) -> StoredTensor:
    """A numpy array as a :class:`StoredTensor` of the same dtype (float16/32/64, ints, bool)."""
    import numpy as np

    names = {np.dtype(v): k for k, v in NUMPY_DTYPES.items()}
    dtype = np.dtype(array.dtype).newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    name = names.get(np.dtype(dtype))
    if name is None:
        raise ValueError(f"safetensors cannot store numpy dtype {array.dtype}")
    data = np.ascontiguousarray(array, dtype=dtype).reshape(-1)
    return StoredTensor(dtype=name, shape=tuple(int(n) for n in array.shape), data=data)


_TORCH_DTYPE_NAMES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


def stored_from_torch(tensor: torch.Tensor) -> StoredTensor:
    """A CPU copy of ``tensor`` as a :class:`StoredTensor` (same dtype, same bytes)."""
    import torch

    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _TORCH_DTYPE_NAMES:
        raise ValueError(f"safetensors cannot store dtype {tensor.dtype}")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    data = flat.view(torch.uint8).numpy() if flat.numel() else b""
    return StoredTensor(dtype=_TORCH_DTYPE_NAMES[name], shape=tuple(tensor.shape), data=data)


def write_safetensors(
    fh: IO[bytes], tensors: Mapping[str, StoredTensor], *, metadata: Mapping[str, str]
) -> None:
    """Write ``tensors`` and string ``metadata`` to ``fh`` in the safetensors format."""
    for key, tensor in tensors.items():
        expected = math.prod(tensor.shape) * DTYPE_SIZES[tensor.dtype]
        if tensor.nbytes != expected:
            raise ValueError(f"tensor {key!r}: {tensor.nbytes} bytes, expected {expected}")
    order = sorted(tensors, key=lambda k: -DTYPE_SIZES[tensors[k].dtype])  # stable
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key in order:
        tensor = tensors[key]
        entry = {"dtype": tensor.dtype, "shape": list(tensor.shape)}
        header[key] = {**entry, "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    fh.write(struct.pack("<Q", len(text)))
    fh.write(text)
    for key in order:
        data = tensors[key].data
        if memoryview(data).nbytes:
            fh.write(memoryview(data).cast("B"))


def write_atomic(path: Path, data: bytes | Callable[[IO[bytes]], None]) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    ``data`` is the bytes to write, or a function that writes them to the open file. An
    existing file is replaced (checks against a run's inputs and ``--force`` belong to
    :class:`lora_audit.formats.output_guard.OutputGuard`, which does the writing).

    Raises
    ------
    OutputError
        On any OS error (permission denied, disk full, …).
    """
    from lora_audit.formats.output_guard import OutputGuard

    OutputGuard(force=True).write(path, data, role="output")


def encode_floats(values: npt.NDArray[np.float64], dtype: str) -> StoredTensor:
    """Float64 values in a stored float dtype, rounded to nearest even, without torch.

    BF16 is the upper half of the float32 bit pattern, rounded as torch rounds it (through
    float32, then to nearest even on the dropped 16 bits; the values are finite).

    Parameters
    ----------
    values : ndarray, float64
    dtype : {"F16", "BF16", "F32", "F64"}
        The safetensors dtype name; anything else is stored as F32.

    Returns
    -------
    StoredTensor
        Same shape; dtype ``dtype`` (F32 for a name that is not a float dtype).

    Raises
    ------
    OverflowError
        When a value would round to infinity (the input is finite).
    """
    import numpy as np

    shape = tuple(int(n) for n in values.shape)
    with np.errstate(over="raise"):
        try:
            if dtype == "BF16":
                bits = np.array(values, dtype=np.float32).reshape(-1).view(np.uint32)  # a copy
                bits += np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
                data = (bits >> np.uint32(16)).astype("<u2")
                if np.any((data & 0x7F80) == 0x7F80):  # rounded up to infinity
                    raise FloatingPointError
                return StoredTensor(dtype="BF16", shape=shape, data=data)
            name = dtype if dtype in {"F16", "F64"} else "F32"
            numpy_dtype = {"F16": "<f2", "F64": "<f8", "F32": "<f4"}[name]
            return StoredTensor(
                dtype=name, shape=shape, data=np.ascontiguousarray(values, dtype=numpy_dtype)
            )
        except FloatingPointError:
            top = float(np.abs(values).max())
            raise OverflowError(f"{top:.3g} is out of the range of {dtype}") from None
