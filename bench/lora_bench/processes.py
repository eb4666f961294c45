"""Whole-process measurements: the floors and lora-audit, spawn to exit, with peak RSS."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_bench.results import MB, CompressRun, Timing

FLOOR_CODE = """
import sys, torch
from safetensors import safe_open
with safe_open(sys.argv[1], framework="pt") as f:
    for key in f.keys():
        f.get_tensor(key).float()
"""

#: The same without torch: numpy reads every bf16 tensor and upcasts it to float32 (for
#: reference; lora-audit's CPU path does not import torch either).
FLOOR_NUMPY_CODE = """
import json, sys
import numpy as np
with open(sys.argv[1], "rb", buffering=0) as fh:
    n = int.from_bytes(fh.read(8), "little")
    header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    for info in header.values():
        start, end = info["data_offsets"]
        fh.seek(8 + n + start)
        raw = np.frombuffer(fh.read(end - start), dtype="<u2")
        (raw.astype(np.uint32) << 16).view(np.float32)
"""

FLOOR_WRITE_CODE = (
    FLOOR_CODE
    + """
import os
path = sys.argv[2] + ".floor.tmp"
size = int(sys.argv[3])
with open(path, "wb") as fh:
    block = bytes(min(size, 16 << 20))
    left = size
    while left > 0:
        left -= fh.write(block[: min(left, len(block))])
    fh.flush()
    os.fsync(fh.fileno())
os.replace(path, sys.argv[2])
"""
)

#: Spawns one command, times it, and reports its own peak RSS. It runs as a small separate
#: process because Linux folds the RSS of the process that forks into the child's
#: ``ru_maxrss`` (the memory map it had when it exec'd): children of this script, which has
#: imported torch, would all appear to use at least as much memory as it does.
LAUNCHER = """
import json, os, subprocess, sys, time
argv, log = json.loads(sys.argv[1]), sys.argv[2]
with open(log, "wb") as out:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
print(json.dumps([seconds, os.waitstatus_to_exitcode(status), rss]))
"""


@dataclass(frozen=True)
class ProcessRun:
    """Wall time, exit status and peak RSS of one child process (stdout and stderr merged)."""

    seconds: float
    returncode: int
    max_rss_bytes: int
    stdout: str


def log(message: str) -> None:
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


def warm_page_cache(path: Path) -> None:
    """Read the whole file once so that every timed run reads from the page cache."""
    with path.open("rb") as fh:
        while fh.read(64 * MB):
            pass


def run_process(argv: Sequence[str]) -> ProcessRun:
    """Run ``argv``; time it from spawn to exit and read its own peak RSS with ``wait4``."""
    with tempfile.TemporaryDirectory() as scratch:
        log_path = Path(scratch) / "output"
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, json.dumps(list(argv)), str(log_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"bench: launcher failed:\n{done.stderr}")
        seconds, returncode, rss = json.loads(done.stdout.strip().splitlines()[-1])
        text = log_path.read_bytes().decode(errors="replace") if log_path.exists() else ""
    return ProcessRun(seconds, returncode, rss, text)


def lora_audit_argv() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m lora_audit``."""
    script = Path(sys.executable).with_name("lora-audit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lora_audit"]


def has_compress() -> bool:
    """Whether this lora-audit has a ``compress`` command."""
    return run_process([*lora_audit_argv(), "compress", "--help"]).returncode == 0


def repeat(argv: Sequence[str], repeats: int, *, what: str, warm: Path | None = None) -> Timing:
    """Run ``argv`` ``repeats`` times, reading ``warm`` into the page cache before each."""
    runs = []
    for _ in range(repeats):
        if warm is not None:
            warm_page_cache(warm)
        runs.append(run_process(argv))
    for run in runs:
        if run.returncode != 0:
            raise SystemExit(f"bench: {what} failed (exit {run.returncode}):\n{run.stdout}")
    return Timing.of([r.seconds for r in runs], rss=[r.max_rss_bytes for r in runs])


def floors(weights: Path, repeats: int) -> tuple[Timing, Timing]:
    """The torch floor (import torch, read + upcast every tensor) and the numpy one."""
    torch_floor = repeat(
        [sys.executable, "-c", FLOOR_CODE, str(weights)], repeats, what="floor", warm=weights
    )
    numpy_floor = repeat(
        [sys.executable, "-c", FLOOR_NUMPY_CODE, str(weights)],
        repeats,
        what="floor (numpy)",
        warm=weights,
    )
    return torch_floor, numpy_floor


def measure_compress(
    adapter: Path, *, cli: Sequence[str], out: Path, tag: str, device: str, repeats: int
) -> CompressRun | str:
    """Time ``compress --energy 0.99`` and the floor that writes as many bytes, with fsync.

    Returns
    -------
    CompressRun | str
        The timings, or the tail of compress's output when it failed (then nothing is timed).
    """
    log(f"{tag}: lora-audit compress, whole process")
    dest = out / f"{tag}.compressed"
    weights = adapter / "adapter_model.safetensors"
    runs = []
    for _ in range(repeats):
        shutil.rmtree(dest, ignore_errors=True)
        warm_page_cache(weights)
        run = run_process(
            [
                *cli,
                "compress",
                str(adapter),
                "-o",
                str(dest),
                "--energy",
                "0.99",
                "--device",
                device,
            ]
        )
        if run.returncode != 0:
            log(f"{tag}: compress failed (exit {run.returncode}); not timed:\n{run.stdout}")
            shutil.rmtree(dest, ignore_errors=True)
            return run.stdout[-2000:]
        runs.append(run)
    written = dest / "adapter_model.safetensors" if dest.is_dir() else dest
    nbytes = written.stat().st_size if written.is_file() else 0
    shutil.rmtree(dest, ignore_errors=True)
    process = Timing.of([r.seconds for r in runs], rss=[r.max_rss_bytes for r in runs])
    scratch = out / f"{tag}.floor-write.bin"
    floor_write = repeat(
        [sys.executable, "-c", FLOOR_WRITE_CODE, str(weights), str(scratch), str(nbytes)],
        repeats,
        what="floor + write",
        warm=weights,
    )
    scratch.unlink(missing_ok=True)
    return CompressRun(process, nbytes, floor_write)
