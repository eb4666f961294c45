"""In-process measurements: the floor, lora-audit's engine and the dense SVD baseline.

Each runs in a fresh worker process (``bench.py --worker engine|dense``), so that its peak
RSS is its own; the worker prints its result as JSON, read back into :mod:`.results`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lora_bench.processes import log, run_process, warm_page_cache
from lora_bench.report import LayerPoint, RankPoint, Scaling, linear_fit
from lora_bench.results import DenseBaseline, DenseShape, EnginePoint, Json, Timing
from lora_bench.synthesis import SHAPES, adapter_dir, write_adapter

#: The command line whose ``--worker`` runs one measurement in a fresh process.
SCRIPT = Path(__file__).resolve().parents[1] / "bench.py"


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: Any, repeats: int, *, warm: Path | None = None) -> Timing:
    fn()  # warm-up: allocator, thread pools, cuBLAS/cuSOLVER handles
    _sync(device)
    times = []
    for _ in range(repeats):
        if warm is not None:
            warm_page_cache(warm)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return Timing.of(times)


def measure_engine(adapter: Any, device: Any, repeats: int) -> EnginePoint:
    """Floor and engine for one adapter (or a subset of its layers), in this process.

    The floor reads every factor through the adapter's ``TensorSource`` (numpy; BF16 widened
    to float32) — on CUDA, copies it to the GPU and upcasts it there to float64.
    """
    import torch

    from lora_audit.engine.device import EngineOptions
    from lora_audit.engine.spectra import spectra

    source, path = adapter.source, adapter.tensor_file
    keys = [k for layer in adapter.layers for k in (layer.a_key, layer.b_key)]
    tensors = source.header.tensors
    nbytes = sum(tensors[k].end - tensors[k].start for k in keys)
    h2d = None
    if device.type == "cuda":

        def copy() -> None:  # the factors as the engine sends them (BF16 widened on the host)
            for k in keys:
                torch.from_numpy(source.get(k)).to(device)

        def floor() -> None:  # … and upcast there to float64, as the engine does
            for k in keys:
                torch.from_numpy(source.get(k)).to(device).double()

        h2d = _timed(copy, device, repeats, warm=path)
    else:

        def floor() -> None:  # read every factor; BF16 is widened to float32 (numpy)
            for k in keys:
                source.get(k)

    floor_timing = _timed(floor, device, repeats, warm=path)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    options = EngineOptions(device=device.type)
    engine = _timed(lambda: spectra(adapter, options=options), device, repeats, warm=path)
    gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return EnginePoint(device.type, len(adapter.layers), nbytes, floor_timing, engine, h2d, gpu)


def worker_engine(args: argparse.Namespace) -> Json:
    """Floor and engine, in process, for each ``[adapter, first k decoder layers or null]``."""
    import dataclasses

    from lora_audit.engine.device import resolve_device
    from lora_audit.formats import load_adapter

    device = resolve_device(args.device)
    points = []
    for path, layers in json.loads(args.points):
        adapter = load_adapter(Path(path))
        if layers:
            adapter = dataclasses.replace(adapter, layers=adapter.layers[: layers * 7])
        points.append(measure_engine(adapter, device, args.repeats).to_dict())
    return {"points": points}


def _dense_shape(adapter: Any, layers: Sequence[Any], device: Any, samples: int) -> Json:
    """Time the float32 SVD of ``samples`` materialised ΔW of one shape; check it against ours."""
    import dataclasses

    import numpy as np
    import torch

    from lora_audit.engine.device import EngineOptions
    from lora_audit.engine.spectra import spectra

    sample = layers[:samples]
    ours = spectra(
        dataclasses.replace(adapter, layers=tuple(sample)), options=EngineOptions(device="cpu")
    )
    times, errors = [], []
    for layer in sample:
        b, a = (torch.from_numpy(f) for f in adapter.load_factors(layer))  # float64, numpy
        _sync(device)
        start = time.perf_counter()
        delta = layer.scale * (b.to(device).float() @ a.to(device).float())
        _, sigma, _ = torch.linalg.svd(delta, full_matrices=False)
        _sync(device)
        times.append(time.perf_counter() - start)
        dense, mine = sigma.double().cpu().numpy(), ours[layer.name]
        k = len(mine)
        errors.append(
            float(max(np.abs(dense[:k] - mine).max(), dense[k:].max(initial=0.0)) / mine[0])
        )
        del delta, sigma
    return {"seconds": times, "max_rel_diff_vs_engine": max(errors)}


def worker_dense(args: argparse.Namespace) -> Json:
    """Dense baseline: materialise ``s·B·A`` (float32) and SVD one matrix of each shape."""
    import torch

    from lora_audit.engine.device import resolve_device
    from lora_audit.formats import load_adapter

    adapter = load_adapter(Path(args.adapter))
    device = resolve_device(args.device)
    by_shape: dict[tuple[int, int], list[Any]] = {}
    for layer in adapter.layers:
        by_shape.setdefault((layer.out_features, layer.in_features), []).append(layer)
    skip = {tuple(s) for s in json.loads(args.skip_shapes or "[]")}
    warm = torch.randn(64, 64, device=device)
    torch.linalg.svd(warm @ warm, full_matrices=False)  # load cuBLAS/cuSOLVER/LAPACK first
    _sync(device)
    shapes = []
    for (out, inp), layers in by_shape.items():
        entry: Json = {"out": out, "in": inp, "count": len(layers)}
        if (out, inp) not in skip:
            entry |= _dense_shape(adapter, layers, device, args.samples)
        shapes.append(entry)
    return {"device": device.type, "shapes": shapes}


def run_worker(task: str, **kwargs: Any) -> tuple[Json, int]:
    """Run ``bench.py --worker TASK`` in a fresh process: its JSON and its peak RSS."""
    import sys

    argv = [sys.executable, str(SCRIPT), "--worker", task]
    for key, value in kwargs.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    run = run_process(argv)
    if run.returncode != 0:
        raise SystemExit(f"bench: worker {task} failed (exit {run.returncode}):\n{run.stdout}")
    result: Json = json.loads(run.stdout.strip().splitlines()[-1])
    return result, run.max_rss_bytes


def engine_points(
    points: Sequence[tuple[Path, int | None]], *, device: str, repeats: int
) -> list[EnginePoint]:
    """In-process floor and engine for several adapters, in one worker process."""
    spec = json.dumps([[str(p), n] for p, n in points])
    result, _ = run_worker("engine", points=spec, device=device, repeats=repeats)
    return [EnginePoint.from_dict(p) for p in result["points"]]


def dense_baseline(
    directory: Path,
    dev: str,
    *,
    samples: int,
    cache: dict[tuple[str, int, int], list[float]],
    tag: str,
) -> DenseBaseline:
    """Time one dense SVD per shape not yet timed on ``dev`` in this run; extrapolate."""
    known = [[o, i] for (d, o, i) in cache if d == dev]
    log(f"{tag}: dense baseline on {dev} (one float32 SVD per new shape; slow)")
    dense, rss = run_worker(
        "dense", adapter=directory, device=dev, samples=samples, skip_shapes=json.dumps(known)
    )
    shapes = []
    for entry in dense["shapes"]:
        key = (dev, entry["out"], entry["in"])
        if "seconds" in entry:
            cache[key] = entry["seconds"]
            shapes.append(DenseShape.from_dict(entry))
        else:
            shapes.append(
                DenseShape(
                    entry["out"], entry["in"], entry["count"], tuple(cache[key]), None, reused=True
                )
            )
    return DenseBaseline(dense["device"], tuple(shapes), rss)


def scaling(args: argparse.Namespace, *, device: str, out: Path) -> Scaling:
    """Engine time against the number of layers (one file) and against r (one file each)."""
    shape = SHAPES[args.scaling_size]
    layer_points = [int(x) for x in args.scaling_layers.split(",")]
    rank_points = [int(x) for x in args.scaling_ranks.split(",")]
    max_layers = max(layer_points)

    def adapter_for(rank: int) -> Path:
        directory = write_adapter(
            adapter_dir(out, shape, rank, max_layers), shape, rank, layers=max_layers
        )
        warm_page_cache(directory / "adapter_model.safetensors")
        return directory

    base = args.scaling_base_rank
    log(f"scaling: layers {layer_points} at r={base}, r {rank_points} at {max_layers} layers")
    points: list[tuple[Path, int | None]] = [(adapter_for(base), n) for n in layer_points]
    points += [(adapter_for(rank), None) for rank in rank_points]
    measured = engine_points(points, device=device, repeats=args.repeats)
    by_layers, by_rank = measured[: len(layer_points)], measured[len(layer_points) :]
    # The two Gram products of a matrix cost r²·(in + out) flops as syrk (half of a gemm).
    width = shape.file_bytes(1, max_layers) // 2  # Σ (in + out) over the matrices
    return Scaling(
        size=shape.name,
        device=device,
        layers=tuple(LayerPoint(n, m) for n, m in zip(layer_points, by_layers, strict=True)),
        layers_fit=linear_fit(layer_points, [m.engine.min for m in by_layers]),
        ranks=tuple(
            RankPoint(r, m, r * r * width) for r, m in zip(rank_points, by_rank, strict=True)
        ),
        ranks_layers=max_layers,
        base_rank=base,
    )
