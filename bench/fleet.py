"""Fleet scale: ``lora-audit inspect FOLDER --format jsonl`` against a numpy floor, side by side.

For each count (100, 1,000, 10,000 …) this builds a folder of that many copies of one sample
adapter folder (hard links: the disk holds one copy; plain copies where links fail), warms the
page cache, and then, ``--repeat`` times in turn, runs

* **the floor**: one Python process that walks the folder, reads every tensor of every
  ``.safetensors`` file, upcasts it to float64 and forms its Gram matrix (numpy only); and
* **lora-audit**: ``lora-audit inspect FOLDER --format jsonl -o OUT`` (the whole process,
  its search, every adapter's report, every line written and fsync'ed),

recording each process's wall time and peak RSS (``wait4``: the process and what it waited
for). The table gives medians over the repeats and the median of the per-repeat ratios: the
two commands run back to back, so a shared machine's load slows both alike. The folders and
outputs are removed at the end, whatever happens.

Usage (from a clone, with lora-audit installed or ``PYTHONPATH=src``)::

    python bench/fleet.py --counts 100,1000,10000 --repeat 3

``--sample DIR`` picks another adapter folder (default: the packaged
``src/lora_audit/samples/minilm-r4-bf16``; ``sample_adapters/minilm-r16`` is the issue's r=16
MiniLM adapter).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "lora_audit" / "samples" / "minilm-r4-bf16"

#: The floor: read, upcast and reduce every tensor of every .safetensors file below argv[1].
FLOOR = r"""
import json, os, struct, sys
import numpy as np

def grams(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    for name, info in header.items():
        if name == "__metadata__" or len(info["shape"]) != 2:
            continue
        a, b = info["data_offsets"]
        raw = np.frombuffer(data, dtype=np.uint8, count=b - a, offset=a)
        if info["dtype"] == "BF16":
            x = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            x = raw.view({"F16": np.float16, "F32": np.float32}[info["dtype"]])
        x = x.astype(np.float64).reshape(info["shape"])
        x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x

for root, dirs, files in os.walk(sys.argv[1]):
    dirs.sort()
    for name in sorted(files):
        if name.endswith(".safetensors"):
            grams(os.path.join(root, name))
"""


@dataclass(frozen=True, kw_only=True)
class Run:
    """One process: wall seconds and peak RSS in MB."""

    seconds: float
    rss_mb: float


def measure(command: Sequence[str], *, env: dict[str, str] | None = None) -> Run:
    """Run ``command`` (stdout and stderr discarded); its wall time and peak RSS (``wait4``)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}")
    return Run(seconds=seconds, rss_mb=usage.ru_maxrss / 1024)


def build(folder: Path, sample: Path, count: int) -> None:
    """``count`` copies of ``sample``'s files in ``folder/a00000`` … (hard links if possible)."""
    files = [p for p in sorted(sample.iterdir()) if p.is_file() and p.suffix != ".md"]
    for i in range(count):
        target = folder / f"a{i:05d}"
        target.mkdir(parents=True)
        for f in files:
            try:
                os.link(f, target / f.name)
            except OSError:
                shutil.copy2(f, target / f.name)


def warm(folder: Path) -> None:
    """Read every file once, so that both commands find the page cache warm."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                while fh.read(1 << 20):
                    pass


def row(count: int, floor: list[Run], audit: list[Run]) -> str:
    """One Markdown table row: medians over the repeats."""
    f = statistics.median(r.seconds for r in floor)
    a = statistics.median(r.seconds for r in audit)
    ratio = statistics.median(x.seconds / y.seconds for x, y in zip(audit, floor, strict=True))
    per = 1000 * a / count
    f_rss = max(r.rss_mb for r in floor)
    a_rss = max(r.rss_mb for r in audit)
    return (
        f"| {count:,} | {f:.2f} s | {a:.2f} s | **{ratio:.1f}×** | {per:.1f} ms | "
        f"{f_rss:.0f} MB | {a_rss:.0f} MB |"
    )


HEADER = (
    "| adapters | floor (numpy) | `inspect --format jsonl` | ratio (median) | per adapter | "
    "peak RSS: floor | peak RSS: jsonl |\n|---:|---:|---:|---:|---:|---:|---:|"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="100,1000", help="comma-separated folder sizes")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, in turn")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="the adapter folder copied")
    parser.add_argument("--workdir", type=Path, default=None, help="where the folders are built")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    lora_audit = [sys.executable, "-m", "lora_audit"]
    work = Path(tempfile.mkdtemp(prefix=".fleet-bench-", dir=args.workdir or ROOT / "bench"))
    # both start as an installed package does: from compiled bytecode (kept outside the tree,
    # even where PYTHONDONTWRITEBYTECODE is set), written by one untimed run of each first
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    lines = [HEADER]
    try:
        for count in counts:
            folder, out = work / f"fleet-{count}", work / f"fleet-{count}.jsonl"
            build(folder, args.sample, count)
            warm(folder)
            floor: list[Run] = []
            audit: list[Run] = []
            command = ["inspect", str(folder), "-f", "jsonl", "-o", str(out), "--force", "-q"]
            if count == counts[0]:  # untimed: compiles the bytecode
                measure([sys.executable, "-c", FLOOR, str(folder)], env=env)
                measure([*lora_audit, *command], env=env)
            for _ in range(args.repeat):
                floor.append(measure([sys.executable, "-c", FLOOR, str(folder)], env=env))
                audit.append(measure([*lora_audit, *command], env=env))
            lines.append(row(count, floor, audit))
            print(lines[-1], file=sys.stderr, flush=True)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
