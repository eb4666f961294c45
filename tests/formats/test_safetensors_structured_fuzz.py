"""A structure-aware fuzzer of the safetensors reader: valid files, then one mutation each.

Random bytes rarely get past the 8-byte length prefix, so these files are built valid (a length
prefix, a JSON header of PEFT LoRA pairs, finite factors in F32/F16/BF16/F64) and then broken in
one place. An unbroken file must load every factor exactly; a mutation that makes the file
inconsistent (a byte range, a shape, a dtype, the header length, a cut) must be refused with one
``InputError`` line; a flipped header byte may load or be refused, never anything else.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_audit.errors import InputError
from lora_audit.formats import load_adapter

SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}


@dataclass(frozen=True)
class Built:
    """A valid file's parts and the float64 value of every tensor it stores."""

    header: dict[str, Any]
    data: bytes
    values: dict[str, np.ndarray]

    def write(self, path: Path, *, header_len_change: int = 0, cut: int = 0) -> Path:
        body = json.dumps(self.header).encode()
        raw = struct.pack("<Q", len(body) + header_len_change) + body + self.data
        path.write_bytes(raw[: len(raw) - cut])
        return path


def encoded(values: np.ndarray, dtype: str) -> tuple[bytes, np.ndarray]:
    """The little-endian bytes of ``values`` in ``dtype``, and what they decode to."""
    if dtype == "BF16":
        upper = (values.astype("<f4").view("<u4") >> 16).astype("<u2")
        return upper.tobytes(), (upper.astype("<u4") << 16).view("<f4").astype(np.float64)
    stored = values.astype({"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype])
    return stored.tobytes(), stored.astype(np.float64)


@st.composite
def valid_files(draw: st.DrawFn) -> Built:
    header: dict[str, Any] = {}
    data, values = bytearray(), {}
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    for i in range(draw(st.integers(1, 3))):
        r, out, inp = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
        dtype = draw(st.sampled_from(sorted(SIZES)))
        for part, shape in (("lora_A", [r, inp]), ("lora_B", [out, r])):
            raw, decoded = encoded(rng.standard_normal(shape), dtype)
            key = f"base_model.model.layers.{i}.proj.{part}.weight"
            header[key] = {
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [len(data), len(data) + len(raw)],
            }
            data += raw
            values[key] = decoded
    return Built(header=header, data=bytes(data), values=values)


def tensor_entry(built: Built, index: int) -> dict[str, Any]:
    keys = sorted(built.header)
    return built.header[keys[index % len(keys)]]


def refused(path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        adapter = load_adapter(path)
        for layer in adapter.layers:
            adapter.load_factors(layer)
    assert "\n" not in str(info.value)
    return info.value


FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(built=valid_files())
def test_a_valid_file_loads_every_factor_exactly(tmp_path: Path, built: Built) -> None:
    adapter = load_adapter(built.write(tmp_path / "adapter_model.safetensors"))
    assert {layer.a_key for layer in adapter.layers} | {
        layer.b_key for layer in adapter.layers
    } == set(built.values)
    for layer in adapter.layers:
        b, a = adapter.load_factors(layer)
        np.testing.assert_array_equal(np.asarray(b, np.float64), built.values[layer.b_key])
        np.testing.assert_array_equal(np.asarray(a, np.float64), built.values[layer.a_key])


@FUZZ
@given(
    built=valid_files(),
    mutation=st.sampled_from(["end", "shape", "dtype", "unknown dtype", "junk entry"]),
    index=st.integers(0, 5),
    change=st.integers(1, 3),
)
def test_an_inconsistent_header_is_refused(
    tmp_path: Path, built: Built, mutation: str, index: int, change: int
) -> None:
    entry = tensor_entry(built, index)
    if mutation == "end":  # the byte range no longer holds the shape
        start, end = entry["data_offsets"]
        entry["data_offsets"] = [start, end + change if index % 2 else max(start, end - change)]
    elif mutation == "shape":
        entry["shape"] = [*entry["shape"][:-1], entry["shape"][-1] + change]
    elif mutation == "dtype":  # same bytes, an element size that does not fit them
        size = SIZES[str(entry["dtype"])]
        entry["dtype"] = next(d for d in sorted(SIZES) if SIZES[d] != size)
    elif mutation == "unknown dtype":
        entry["dtype"] = "F128"
    else:
        built.header["base_model.model.junk.lora_A.weight"] = [1, 2]
    refused(built.write(tmp_path / "adapter_model.safetensors"))


@FUZZ
@given(built=valid_files(), change=st.integers(-8, 8).filter(bool), cut=st.integers(1, 64))
def test_a_wrong_length_or_a_cut_file_is_refused(
    tmp_path: Path, built: Built, change: int, cut: int
) -> None:
    path = tmp_path / "adapter_model.safetensors"
    refused(built.write(path, header_len_change=change))
    size = 8 + len(json.dumps(built.header).encode()) + len(built.data)
    refused(built.write(path, cut=min(cut, size)))


@FUZZ
@given(built=valid_files(), position=st.integers(0, 10_000), bits=st.integers(1, 255))
def test_a_flipped_header_byte_loads_or_is_refused(
    tmp_path: Path, built: Built, position: int, bits: int
) -> None:
    path = built.write(tmp_path / "adapter_model.safetensors")
    raw = bytearray(path.read_bytes())
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    raw[8 + position % (header_end - 8)] ^= bits
    path.write_bytes(bytes(raw))
    try:
        adapter = load_adapter(path)
        for layer in adapter.layers:
            b, a = adapter.load_factors(layer)
            assert b.shape[1] == a.shape[0] == layer.rank
    except InputError as error:
        assert "\n" not in str(error)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(built=valid_files().filter(lambda b: all(e["dtype"] != "BF16" for e in b.header.values())))
def test_the_built_files_are_what_the_safetensors_library_reads(
    tmp_path: Path, built: Built
) -> None:
    """The builder writes real safetensors: the reference library reads the same values."""
    from safetensors.numpy import load_file

    loaded = load_file(str(built.write(tmp_path / "x.safetensors")))
    assert set(loaded) == set(built.values)
    for key, value in built.values.items():
        np.testing.assert_array_equal(np.asarray(loaded[key], np.float64), value)
