"""The benchmark's driver: measure every adapter in turn and assemble the :class:`Report`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lora_bench.in_process import dense_baseline, engine_points, scaling
from lora_bench.processes import (
    floors,
    has_compress,
    log,
    lora_audit_argv,
    measure_compress,
    repeat,
    warm_page_cache,
)
from lora_bench.report import Report, targets
from lora_bench.results import MB, DenseBaseline, InspectRun, Row
from lora_bench.synthesis import SHAPES, adapter_dir, write_adapter

#: Files over this size are only written with ``--allow-large``.
LARGE_BYTES = 1024 * MB


def machine_info(device: str) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    return info


def _resolve_device(requested: str) -> str:
    import torch

    device = "cuda" if requested == "auto" and torch.cuda.is_available() else requested
    device = "cpu" if device == "auto" else device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but no CUDA device is available")
    return device


def _fits(size: str, rank: int, layers: int, out: Path, *, allow_large: bool) -> Path | None:
    """The adapter's directory, or ``None`` (with a log line) when it is too large to write."""
    shape = SHAPES[size]
    need = shape.file_bytes(rank, layers)
    if need > LARGE_BYTES and not allow_large:
        log(f"skipping {size} r={rank}: {need / MB:.0f} MB needs --allow-large")
        return None
    directory = adapter_dir(out, shape, rank, layers)
    weights = directory / "adapter_model.safetensors"
    free = shutil.disk_usage(out).free + (weights.stat().st_size if weights.exists() else 0)
    if need * 2 + 512 * MB > free:  # the adapter, a compressed copy, and slack
        log(f"skipping {size} r={rank}: {need / MB:.0f} MB, only {free / MB:.0f} MB free")
        return None
    log(f"{directory.name}: writing adapter ({need / MB:.0f} MB) to {directory} unless cached")
    return write_adapter(directory, shape, rank, layers=layers)


def _inspect_runs(
    directory: Path, *, cli: list[str], out: Path, device: str, repeats: int
) -> tuple[InspectRun, ...]:
    """``lora-audit inspect`` whole process on ``device`` (and on the CPU too, on CUDA)."""
    weights = directory / "adapter_model.safetensors"
    report_file = out / f"{directory.name}.inspect.json"
    runs = []
    for dev in [device] + (["cpu"] if device == "cuda" else []):
        log(f"{directory.name}: lora-audit inspect --device {dev}, whole process")
        argv = [
            *cli,
            "inspect",
            str(directory),
            "--format",
            "json",
            "-o",
            str(report_file),
            "--force",  # the report of the previous repeat is replaced (exit 2 without it)
            "--device",
            dev,
        ]
        runs.append(InspectRun(dev, repeat(argv, repeats, what="lora-audit inspect", warm=weights)))
    return tuple(runs)


def _chosen(size: str, names: str) -> bool:
    listed = names.split(",")
    return "all" in listed or size in listed


def measure_row(
    size: str,
    rank: int,
    layers: int,
    directory: Path,
    *,
    args: argparse.Namespace,
    device: str,
    cli: list[str],
    compress: bool,
    dense_cache: dict[tuple[str, int, int], list[float]],
) -> Row:
    """Every measurement of one adapter."""
    out, tag = Path(args.out), directory.name
    weights = directory / "adapter_model.safetensors"
    warm_page_cache(weights)
    log(f"{tag}: floor, whole process")
    floor, numpy_floor = floors(weights, args.repeats)
    inspect = _inspect_runs(directory, cli=cli, out=out, device=device, repeats=args.repeats)
    log(f"{tag}: floor and engine, in process ({device})")
    (in_process,) = engine_points([(directory, None)], device=device, repeats=args.repeats)
    in_process_cpu = None
    if device == "cuda":
        log(f"{tag}: floor and engine, in process (cpu, for comparison)")
        (in_process_cpu,) = engine_points([(directory, None)], device="cpu", repeats=args.repeats)
    compressed = None
    if compress and _chosen(size, args.compress_sizes):
        compressed = measure_compress(
            directory, cli=cli, out=out, tag=tag, device=device, repeats=args.repeats
        )
    dense: tuple[DenseBaseline, ...] = ()
    if args.dense_samples > 0 and _chosen(size, args.dense_sizes):
        devices = [device] + (["cpu"] if device == "cuda" and args.dense_cpu else [])
        dense = tuple(
            dense_baseline(directory, dev, samples=args.dense_samples, cache=dense_cache, tag=tag)
            for dev in devices
        )
    return Row(
        size=size,
        rank=rank,
        layers=layers,
        matrices=layers * 7,
        file_bytes=weights.stat().st_size,
        adapter=str(directory),
        floor_process=floor,
        floor_numpy_process=numpy_floor,
        inspect=inspect,
        in_process=in_process,
        in_process_cpu=in_process_cpu,
        compress=compressed if not isinstance(compressed, str) else None,
        compress_error=compressed if isinstance(compressed, str) else None,
        dense=dense,
    )


def bench(args: argparse.Namespace) -> Report:
    device = _resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    for s in sizes:
        if s not in SHAPES:
            raise SystemExit(f"bench: unknown size {s!r} (choose from {', '.join(SHAPES)})")
    cli = lora_audit_argv()
    log("timing `lora-audit --help`")
    report = Report(
        command=" ".join(["python", "bench/bench.py", *sys.argv[1:]]),
        machine=machine_info(device),
        device=device,
        repeats=args.repeats,
        help=repeat([*cli, "--help"], args.repeats, what="lora-audit --help"),
        results=(),
    )
    compress = not args.skip_compress and has_compress()
    dense_cache: dict[tuple[str, int, int], list[float]] = {}
    rows: list[Row] = []
    for size in sizes:
        layers = min(SHAPES[size].layers, args.layers or SHAPES[size].layers)
        for rank in ranks:
            directory = _fits(size, rank, layers, out, allow_large=args.allow_large)
            if directory is None:
                continue
            rows.append(
                measure_row(
                    size,
                    rank,
                    layers,
                    directory,
                    args=args,
                    device=device,
                    cli=cli,
                    compress=compress,
                    dense_cache=dense_cache,
                )
            )
            save_partial(args, replace_rows(report, rows))
    report = replace_rows(report, rows)
    sweep = scaling(args, device=device, out=out) if args.scaling else None
    return Report(
        report.command,
        report.machine,
        report.device,
        report.repeats,
        report.help,
        report.results,
        sweep,
        targets(report.help.min, report.results),
    )


def replace_rows(report: Report, rows: Sequence[Row]) -> Report:
    return dataclasses.replace(report, results=tuple(rows))


def json_path(args: argparse.Namespace) -> Path:
    return Path(args.json) if args.json else Path(args.out) / "bench.json"


def save_partial(args: argparse.Namespace, report: Report) -> None:
    """Write what has been measured so far, so that an interrupted run keeps it."""
    path = json_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial: dict[str, Any] = {**report.to_dict(), "partial": True}
    partial.pop("targets")
    path.write_text(json.dumps(partial, indent=2) + "\n")
