"""Hostile inputs, built with numpy and the format's byte layout (no torch, no safetensors)."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lora_audit.formats.safetensors_io import StoredTensor, write_safetensors

SRC = Path(__file__).resolve().parents[2] / "src"
#: Address-space limit of every subprocess run: a bomb fails fast instead of eating RAM.
MEMORY_LIMIT = 1536 << 20
TIME_LIMIT_S = 10.0
_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2"}


def tensor(shape: Sequence[int], *, dtype: str = "F32", seed: int = 0, scale: float = 1.0) -> Any:
    """A StoredTensor of random values (``scale`` times standard normal)."""
    values = np.random.default_rng(seed).standard_normal(tuple(shape)) * scale
    data = np.ascontiguousarray(values, dtype=_DTYPES[dtype])
    return StoredTensor(dtype=dtype, shape=tuple(shape), data=data)


def write_st(
    path: Path, tensors: Mapping[str, StoredTensor], *, metadata: Mapping[str, str] | None = None
) -> Path:
    """A valid safetensors file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        write_safetensors(fh, tensors, metadata=metadata or {})
    return path


def write_raw_header(path: Path, header_text: str, *, data: bytes = b"") -> Path:
    """A safetensors file with a hand-written JSON header (for headers json.dumps cannot make)."""
    raw = header_text.encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def peft_dir(
    directory: Path,
    *,
    config: Mapping[str, Any] | str | None = None,
    layers: Sequence[str] = ("model.layers.0.q_proj",),
    rank: int = 4,
    dtype: str = "F32",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """A small PEFT adapter directory (``config`` written as JSON, or as text when a str)."""
    tensors = {}
    for i, name in enumerate(layers):
        tensors[f"base_model.model.{name}.lora_A.weight"] = tensor((rank, 6), dtype=dtype, seed=i)
        tensors[f"base_model.model.{name}.lora_B.weight"] = tensor(
            (8, rank), dtype=dtype, seed=100 + i
        )
    write_st(directory / "adapter_model.safetensors", tensors, metadata=metadata)
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (directory / "adapter_config.json").write_text(text, encoding="utf-8")
    return directory


@dataclass(frozen=True)
class Run:
    """What a CLI run left: exit code, streams, seconds."""

    code: int
    stdout: str
    stderr: str
    seconds: float


def run_cli(args: Sequence[str], *, cwd: Path, stdin: int | None = subprocess.DEVNULL) -> Run:
    """``lora-audit ARGS`` in a subprocess with :data:`MEMORY_LIMIT` and :data:`TIME_LIMIT_S`."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "100", "NO_COLOR": "1"}
    env.pop("CI", None)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "from lora_audit.cli import main; main()", *args],
        cwd=cwd,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT_S * 3,
        preexec_fn=limit,
        env=env,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)


def assert_refused(run: Run, *, code: int = 3, words: Sequence[str] = ()) -> str:
    """One ``lora-audit: error:`` line on stderr, exit ``code``, no traceback, in time."""
    lines = [line for line in run.stderr.splitlines() if "warning:" not in line]
    assert run.code == code, run.stderr
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("lora-audit: error: "), run.stderr
    assert "unexpected" not in lines[0] and "Traceback" not in run.stderr, run.stderr
    assert run.seconds < TIME_LIMIT_S, run.seconds
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]
