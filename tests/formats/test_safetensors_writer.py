"""Writing safetensors without torch: what the safetensors library reads back, bit for bit."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from lora_audit.formats.safetensors_io import (
    DTYPE_SIZES,
    SafetensorsSource,
    StoredTensor,
    encode_floats,
    read_header,
    stored_from_torch,
    write_atomic,
    write_safetensors,
)

TORCH_DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool,
]  # fmt: skip


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=gen).to(dtype)


def write(path: Path, tensors: dict[str, StoredTensor], metadata: dict[str, str]) -> Path:
    write_atomic(path, lambda fh: write_safetensors(fh, tensors, metadata=metadata))
    return path


def test_every_dtype_reads_back_equal_through_the_safetensors_library(tmp_path: Path) -> None:
    shapes = [(3, 5), (), (0, 4), (7,), (2, 1, 3, 3)]
    originals = {
        f"t.{i}.{j}": sample(dtype, shape, seed=i * 10 + j)
        for i, dtype in enumerate(TORCH_DTYPES)
        for j, shape in enumerate(shapes)
    }
    stored = {key: stored_from_torch(t) for key, t in originals.items()}
    path = write(tmp_path / "all.safetensors", stored, {"note": "ü ✓", "k": "v"})
    header = read_header(path)  # our own strict validation accepts it
    assert header.metadata == {"note": "ü ✓", "k": "v"}
    with safe_open(str(path), framework="pt") as fh:
        assert set(fh.keys()) == set(originals)
        for key, original in originals.items():
            got = fh.get_tensor(key)
            assert got.dtype == original.dtype and got.shape == original.shape
            assert torch.equal(got, original), key
    for info in header.tensors.values():  # every tensor aligned to its element size
        assert (header.data_start + info.start) % DTYPE_SIZES[info.dtype] == 0
    assert header.data_start % 8 == 0


def test_raw_bytes_copy_a_file_exactly(tmp_path: Path) -> None:
    tensors = {"a": sample(torch.bfloat16, (4, 6), 1), "b": sample(torch.float32, (3,), 2),
               "c": sample(torch.int64, (2, 2), 3)}  # fmt: skip
    src = tmp_path / "src.safetensors"
    save_file(tensors, str(src), metadata={"m": "1"})
    source = SafetensorsSource(src, read_header(src))
    copy = write(tmp_path / "copy.safetensors", {k: source.raw(k) for k in tensors}, {"m": "1"})
    with safe_open(str(copy), framework="pt") as fh:
        for key, original in tensors.items():
            assert torch.equal(fh.get_tensor(key), original)


def test_wrong_byte_count_is_refused(tmp_path: Path) -> None:
    bad = StoredTensor(dtype="F32", shape=(2, 2), data=b"\0" * 12)
    with pytest.raises(ValueError, match="12 bytes, expected 16"):
        write(tmp_path / "bad.safetensors", {"x": bad}, {})
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_header_is_padded_to_eight_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "p.safetensors", {"x": stored_from_torch(torch.ones(3))}, {})
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert n % 8 == 0 and path.read_bytes()[8 + n - 1 : 8 + n] in (b" ", b"}")


# Halfway cases decide rounding: values exactly between two bf16 / f16 neighbours, their
# neighbours one float32 ulp away, extremes and signed zeros.
_TIES = np.array(
    [1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-23, 1 + 2**-8 - 2**-23, -(1 + 2**-8), 0.0, -0.0,
     1e-40, 65504.0, 65519.0, 2**-24, 2**-25, 1 + 2**-11, 1 + 3 * 2**-11, 1e-300]
)  # fmt: skip
_LARGEST = {"BF16": 3.3895e38, "F16": 65519.0, "F32": 3.4028e38, "F64": 1.7e308}


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F64"])
def test_float_encoding_rounds_as_torch_does(dtype: str) -> None:
    gen = np.random.default_rng(0)
    values = np.concatenate(
        [_TIES, gen.standard_normal(10_000) * 10.0 ** gen.integers(-8, 8, 10_000)]
    )
    values = values[np.abs(values) <= _LARGEST[dtype]]
    torch_dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
                   "F64": torch.float64}[dtype]  # fmt: skip
    expected = torch.from_numpy(values).to(torch_dtype)
    got = encode_floats(values.reshape(100, -1) if values.size % 100 == 0 else values, dtype)
    assert got.dtype == dtype
    assert (
        bytes(memoryview(got.data).cast("B"))
        == expected.reshape(-1).view(torch.uint8).numpy().tobytes()
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=50)
)
def test_bf16_encoding_matches_torch_on_any_finite_value(values: list[float]) -> None:
    array = np.array(values)
    expected = torch.from_numpy(array).to(torch.bfloat16)
    if not bool(torch.isfinite(expected).all()):  # torch would store inf: refused instead
        with pytest.raises(OverflowError, match="out of the range of BF16"):
            encode_floats(array, "BF16")
        return
    got = np.frombuffer(memoryview(encode_floats(array, "BF16").data).cast("B"), dtype="<i2")
    assert np.array_equal(got, expected.view(torch.int16).numpy())


@pytest.mark.parametrize(("dtype", "value"), [("F16", 65520.0), ("BF16", 3.4e38), ("F32", 1e39)])
def test_values_that_would_become_infinite_are_refused(dtype: str, value: float) -> None:
    with pytest.raises(OverflowError, match=f"out of the range of {dtype}"):
        encode_floats(np.array([1.0, -value]), dtype)


def test_encoding_leaves_the_input_alone() -> None:
    values = np.linspace(-1, 1, 11)
    before = values.copy()
    encode_floats(values, "BF16")
    assert np.array_equal(values, before)
    assert encode_floats(np.array(2.5), "BF16").shape == ()
