#!/usr/bin/env python
"""Benchmark lora-audit against the I/O floor and against the dense-SVD approach.

What it does, in one run (plain Python, no harness):

1. Writes synthetic PEFT adapters with Llama shapes (``adapter_model.safetensors`` +
   ``adapter_config.json``, bf16, every q/k/v/o/gate/up/down projection of every decoder
   layer) whose ``B·A`` has a planted, geometrically decaying spectrum. Files are generated
   layer by layer with fixed seeds and streamed to disk, and reused by later runs.
2. Reads the file into the page cache again before every timed run, so that every
   measurement sees a warm cache (the floor, the engine and the CLI all read the same cached
   bytes; some VMs reclaim idle page cache within seconds).
3. Measures, min and median over ``--repeats`` runs:

   * **floor, whole process**: ``python -c`` that imports torch and safetensors, reads every
     tensor and ``.float()``s it;
   * **inspect, whole process**: ``lora-audit inspect ADAPTER --format json -o FILE``;
   * **floor, in process**: read every tensor through lora-audit's ``TensorSource`` (numpy;
     BF16 widened to float32), and on CUDA copy it to the GPU (and upcast it there);
   * **engine, in process**: :func:`lora_audit.engine.spectra.spectra` on the same device;
   * **dense baseline**: for one matrix of each distinct shape, materialise
     ``ΔW = s·B·A`` in float32 and run ``torch.linalg.svd(ΔW, full_matrices=False)``; the
     time per shape times the number of matrices of that shape is the **extrapolated** time
     for the whole adapter (the dense cost does not depend on ``r``, so a shape is timed once
     per run and reused across ranks);
   * ``lora-audit --help`` (whole process), and ``lora-audit compress`` when the command
     exists (against the floor plus writing a file of the output's size);
   * peak RSS of every process (``wait4``), and peak GPU memory
     (``torch.cuda.max_memory_allocated``) on CUDA;
   * how engine time grows with the number of layers and with ``r`` (least-squares line).

4. Prints Markdown tables and writes everything to JSON.

The parts live in ``bench/lora_bench/``: ``synthesis`` (the adapters), ``processes`` and
``in_process`` (the measurements), ``results`` and ``report`` (frozen dataclasses of what was
measured, and their JSON form), ``tables`` (the Markdown). This file is the command line.

Examples::

    python bench/bench.py --quick                       # CI-sized, < 1 min on 2 cores
    python bench/bench.py --sizes 7b --ranks 16,64      # the docs/performance.md table (CPU)
    python bench/bench.py --sizes 7b,70b --device cuda  # on a GPU machine
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script, or loaded from its path by the tests
    sys.path.insert(0, str(HERE))

from lora_bench.driver import LARGE_BYTES, bench, json_path  # noqa: E402
from lora_bench.in_process import worker_dense, worker_engine  # noqa: E402
from lora_bench.processes import log, run_process  # noqa: E402
from lora_bench.report import linear_fit  # noqa: E402
from lora_bench.results import MB  # noqa: E402
from lora_bench.synthesis import SHAPES, ModelShape, planted_spectrum, write_adapter  # noqa: E402
from lora_bench.tables import markdown  # noqa: E402

__all__ = ["ModelShape", "linear_fit", "main", "planted_spectrum", "run_process", "write_adapter"]

DEFAULT_OUT = HERE / "results"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark lora-audit against the I/O floor and the dense-SVD approach.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small CI-sized run: 1b shapes, 4 layers, r=16,64; < 1 min on 2 cores",
    )
    p.add_argument(
        "--sizes",
        default="7b",
        help=f"comma-separated, from {', '.join(SHAPES)} (default: %(default)s)",
    )
    p.add_argument(
        "--ranks", default="16,64", help="comma-separated LoRA ranks (default: %(default)s)"
    )
    p.add_argument(
        "--layers",
        type=int,
        default=None,
        help="use only this many decoder layers (default: the model's)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed runs per measurement (default: %(default)s)"
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: CUDA when available (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help="where adapters (cached between runs) and reports go (default: %(default)s)",
    )
    p.add_argument("--json", default=None, help="write the results here (default OUT/bench.json)")
    p.add_argument(
        "--allow-large",
        action="store_true",
        help=f"write adapters over {LARGE_BYTES // MB} MB (70b r=64 is ~1.6 GB)",
    )
    p.add_argument(
        "--dense-samples",
        type=int,
        default=1,
        help="matrices per distinct shape for the dense baseline; 0 skips it",
    )
    p.add_argument(
        "--dense-sizes",
        default="all",
        help="sizes that get the dense baseline, or all (70b dense SVDs take ~1 h on 2 cores)",
    )
    p.add_argument(
        "--dense-cpu",
        action="store_true",
        help="on CUDA, also time the dense baseline on the CPU (very slow)",
    )
    p.add_argument("--skip-compress", action="store_true", help="do not time compress")
    p.add_argument(
        "--compress-sizes",
        default="all",
        help="sizes whose compress is timed, or all (default: %(default)s)",
    )
    p.add_argument(
        "--no-scaling", dest="scaling", action="store_false", help="skip the scaling tables"
    )
    p.add_argument("--scaling-size", default="7b", help="model shape for the scaling tables")
    p.add_argument("--scaling-layers", default="4,8,16,32", help="decoder-layer counts")
    p.add_argument("--scaling-ranks", default="8,16,32,64", help="ranks")
    p.add_argument("--scaling-base-rank", type=int, default=64, help="r of the layer sweep")
    # Internal: one in-process measurement in a fresh process.
    p.add_argument("--worker", choices=["engine", "dense"], help=argparse.SUPPRESS)
    p.add_argument("--adapter", help=argparse.SUPPRESS)
    p.add_argument("--points", default=None, help=argparse.SUPPRESS)
    p.add_argument("--samples", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--skip-shapes", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.ranks, args.layers = "1b", "16,64", args.layers or 4
        args.scaling_size, args.scaling_layers = "1b", "1,2,4,8"
        args.scaling_ranks, args.scaling_base_rank = "8,16,32,64", 64
    if args.repeats < 1:
        p.error("--repeats must be ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        fn = worker_engine if args.worker == "engine" else worker_dense
        print(json.dumps(fn(args)))
        return 0
    report = bench(args)
    text = markdown(report)
    sys.stdout.write(text)
    path = json_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report.to_dict(), "markdown": text}, indent=2) + "\n")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
