"""Hostile and broken safetensors files end in one clear InputError, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lora_audit.errors import InputError, OutputError
from lora_audit.formats import load_adapter
from lora_audit.formats.safetensors_io import MAX_HEADER_BYTES, read_header, write_atomic


def raw_file(path: Path, header: object, data: bytes = b"", *, length: int | None = None) -> Path:
    body = json.dumps(header).encode() if not isinstance(header, bytes) else header
    n = len(body) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + body + data)
    return path


def entry(
    dtype: str = "F32", shape: list[int] | None = None, offsets: list[int] | None = None
) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape or [2, 2], "data_offsets": offsets or [0, 16]}


CASES: dict[str, tuple[object, bytes, int | None, str]] = {
    "truncated_prefix": (b"", b"", None, "too short"),
    "header_past_end": ({}, b"", 10_000, "runs past the end"),
    "header_over_limit": ({}, b"", MAX_HEADER_BYTES + 1, "over the"),
    "not_json": (b"{nope", b"", None, "not valid JSON"),
    "not_object": ([1, 2], b"", None, "not a JSON object"),
    "unknown_dtype": ({"t": entry(dtype="F128")}, bytes(16), None, "unknown dtype"),
    "bad_shape": ({"t": entry(shape=[-1, 2])}, bytes(16), None, "non-negative integers"),
    "offsets_out_of_range": ({"t": entry(offsets=[0, 64])}, bytes(16), None, "outside"),
    "size_mismatch": ({"t": entry(offsets=[0, 8])}, bytes(16), None, "bytes stored"),
    "overlap": (
        {"a": entry(offsets=[0, 16]), "b": entry(offsets=[8, 24])},
        bytes(24),
        None,
        "overlap",
    ),
    "bad_metadata": ({"__metadata__": {"k": 1}}, b"", None, "strings to strings"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_headers(tmp_path: Path, case: str) -> None:
    header, data, length, needle = CASES[case]
    path = tmp_path / "adapter_model.safetensors"
    if case == "truncated_prefix":
        path.write_bytes(b"\x01\x02")
    else:
        raw_file(path, header, data, length=length)
    with pytest.raises(InputError) as info:
        read_header(path)
    assert needle in str(info.value) and str(path) in str(info.value)
    with pytest.raises(InputError):
        load_adapter(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "adapter_model.safetensors"
    path.touch()
    with pytest.raises(InputError, match="0 bytes"):
        load_adapter(path)


def test_unknown_keys_only(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"model.weight": torch.ones(2, 2)}, str(path))
    with pytest.raises(InputError, match="no LoRA factors"):
        load_adapter(path)


def test_pickle_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    for name in ("adapter_model.bin", "model.pt", "x.ckpt"):
        (tmp_path / name).write_bytes(pickle.dumps(Exploit()))
        with pytest.raises(InputError, match="never opened"):
            load_adapter(tmp_path / name)
    with pytest.raises(InputError, match="never opened"):
        load_adapter(tmp_path)
    assert not marker.exists()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=512))
def test_fuzz_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    with contextlib.suppress(InputError):
        load_adapter(path)


_key = (
    st.sampled_from(["base_model.model.", "", "x."])
    .flatmap(
        lambda p: st.tuples(
            st.just(p),
            st.sampled_from(["q", "a.b", "layers.0.v"]),
            st.sampled_from(
                [
                    ".lora_A.weight",
                    ".lora_B.weight",
                    ".lora_embedding_A",
                    ".lora_embedding_B",
                    ".lora_B.bias",
                    ".alpha",
                    ".lora_magnitude_vector",
                    ".weight",
                    ".lora_A.default.weight",
                ]
            ),
        )
    )
    .map("".join)
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.lists(_key, min_size=1, max_size=6, unique=True),
    shapes=st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=4), min_size=6, max_size=6),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.int64]),
)
def test_fuzz_key_pairing(
    tmp_path: Path, keys: list[str], shapes: list[list[int]], dtype: torch.dtype
) -> None:
    from lora_audit.commands.inspect import AuditOptions, inspect_adapter

    path = tmp_path / "pairs.safetensors"
    tensors = {k: torch.ones(tuple(s), dtype=dtype) for k, s in zip(keys, shapes, strict=False)}
    save_file(tensors, str(path))
    try:
        adapter = load_adapter(path)
        inspect_adapter(adapter, options=AuditOptions())
    except InputError:
        pass


def test_write_atomic_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OutputError, match="No space left"):
        write_atomic(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_atomic_permission_denied(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="cannot write"):
        write_atomic(locked / "x", b"data")


def test_write_atomic_gives_ordinary_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "report.json", b"{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644
