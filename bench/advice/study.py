"""The retraining study behind lora-audit's rank advice (issue #22): rerunnable, resumable.

Run (one core, in the background; a rerun skips every run already in the results file)::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nohup taskset -c 1 python bench/advice/study.py \
        > bench/results/advice/study.log 2>&1 &

Task by task, phase 1 trains every (rank, seed) run and appends one JSON line per run to
``bench/results/advice/results.jsonl`` (copied to ``docs/advice/results.jsonl``); adapters
with r ≥ 16 are saved and audited (per-layer k@τ, stable ranks, the tool's advice). Phase 2
compresses those adapters (default τ=0.99, then at the power-of-two ranks the candidate rules
advise) and evaluates them as is; the other advised ranks come last, after every task.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import KINDS, LIBRARIES, Example, build
from harness import Recipe, audit, compressed_accuracy, evaluate, train

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "advice"
DOCS = ROOT / "docs" / "advice"
RANKS = (64, 16, 32, 8, 4, 2, 1)  # the originals (r ≥ 16) first, then down
SEEDS = (0, 1, 2)
TASKS = {
    "library": {"labels": len(LIBRARIES), "max_len": 24},
    "kind": {"labels": len(KINDS), "max_len": 24},
}
STEPS, HEAD_LR, BATCH = 120, 3e-3, 16
TRAIN, TEST = 8000, 2560


#: How the LoRA learning rate falls above r=8, per task (see docs/advice.md, "Learning rate"):
#: ∝ 1/√r on ``library``; ∝ 1/r on ``kind``, whose r=64 runs collapsed to chance (loss ln 3)
#: at the 1/√r rate in 2 of 4 tries (120 and 400 steps; kept in results-400-kind-sqrt-lr.jsonl).
LR_POWER = {"library": 0.5, "kind": 1.0}


def lora_lr(rank: int, power: float = 0.5) -> float:
    """2e-3 up to r=8, then ∝ (8/r)^power (α=2r makes the step on ΔW grow with r)."""
    return 2e-3 * min(1.0, (8 / rank) ** power)


def done(path: Path) -> set[tuple[str, ...]]:
    """Keys of the results already recorded."""
    if not path.exists():
        return set()
    return {
        tuple(map(str, json.loads(line)["key"])) for line in path.read_text().splitlines() if line
    }


def append(path: Path, record: dict[str, Any]) -> None:
    """Append one result line, and mirror the file under docs/advice/."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
    DOCS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, DOCS / path.name)


def run_one(
    task: str,
    rank: int,
    seed: int,
    data: dict[str, list[Example]],
    *,
    steps: int,
    save: Path | None,
) -> dict[str, Any]:
    """Train, evaluate and (when ``save``) save and audit one adapter."""
    spec = TASKS[task]
    recipe = Recipe(
        rank=rank,
        seed=seed,
        steps=steps,
        lr=lora_lr(rank, LR_POWER[task]),
        head_lr=HEAD_LR,
        batch=BATCH,
        max_len=spec["max_len"],
    )
    wall, cpu = time.perf_counter(), time.process_time()
    model, tokenizer, loss = train(recipe, data["train"], spec["labels"])
    trained = time.perf_counter()
    accuracy = evaluate(model, tokenizer, data["test"], spec["max_len"])
    record: dict[str, Any] = {
        "kind": "train",
        "key": ["train", task, rank, seed],
        "task": task,
        "rank": rank,
        "seed": seed,
        "recipe": asdict(recipe),
        "accuracy": accuracy,
        "final_loss": loss,
        "n_train": len(data["train"]),
        "n_test": len(data["test"]),
        "train_seconds": round(trained - wall, 2),
        "eval_seconds": round(time.perf_counter() - trained, 2),
    }
    if save is not None:
        model.save_pretrained(save)
        record["adapter"] = str(save.relative_to(ROOT) if save.is_relative_to(ROOT) else save)
        record["audit"] = audit(save)
    record["seconds"] = round(time.perf_counter() - wall, 2)
    record["cpu_seconds"] = round(time.process_time() - cpu, 2)
    return record


def phase_train(
    tasks: dict[str, dict[str, list[Example]]],
    results: Path,
    steps: int,
    task: str,
    ranks: tuple[int, ...] = RANKS,
) -> None:
    """Every (rank, seed) of ``task``; seeds innermost, so each finished rank is a whole cell."""
    for rank in ranks:
        for seed in SEEDS:
            if ("train", task, str(rank), str(seed)) in done(results):
                continue
            save = (
                results.parent / f"{results.stem}-adapters" / f"{task}-r{rank}-s{seed}"
                if rank >= 16
                else None
            )
            record = run_one(task, rank, seed, tasks[task], steps=steps, save=save)
            append(results, record)
            print(
                f"{task} r={rank} seed={seed} acc={record['accuracy']:.4f} "
                f"{record['seconds']:.0f}s",
                flush=True,
            )


def phase_compress(
    tasks: dict[str, dict[str, list[Example]]], results: Path, task: str | None, *, exact: bool
) -> None:
    """Compressed originals of ``task`` (all when None): the default τ=0.99, then the ranks the
    candidate rules advise — powers of two first; the other ranks only when ``exact``."""
    from rules import advised_ranks, next_power_of_two

    originals = [json.loads(x) for x in results.read_text().splitlines() if x]
    originals = [
        r for r in originals if r["kind"] == "train" and "audit" in r and task in (None, r["task"])
    ]
    plans: list[tuple[dict[str, Any], int | None]] = [(r, None) for r in originals]
    for pow2 in (True, False) if exact else (True,):
        for r in originals:
            ranks = advised_ranks(r["audit"]["layers"], r["rank"])
            plans += [(r, k) for k in sorted(ranks) if (next_power_of_two(k) == k) == pow2]
    for record, rank in plans:
        key = ("compress", record["task"], str(record["rank"]), str(record["seed"]), str(rank))
        if key in done(results):
            continue
        spec = TASKS[record["task"]]
        out = (
            results.parent
            / f"{results.stem}-compressed"
            / f"{Path(record['adapter']).name}-k{rank or 'tau'}"
        )
        result = compressed_accuracy(
            ROOT / record["adapter"],
            out,
            tasks[record["task"]]["test"],
            spec["labels"],
            spec["max_len"],
            rank=rank,
        )
        append(
            results,
            {
                "kind": "compress",
                "key": list(key),
                "task": record["task"],
                "rank": record["rank"],
                "seed": record["seed"],
                "target": rank,
                **result,
            },
        )
        print(f"compress {key} acc={result['accuracy']:.4f}", flush=True)


def phase_pattern(
    tasks: dict[str, dict[str, list[Example]]],
    results: Path,
    steps: int,
    task: str,
    rule_name: str,
    originals: tuple[int, ...],
    source: Path | None = None,
) -> None:
    """Retrain the ``rank_pattern`` plan ``rule_name`` makes for ``task``'s seed-0 original at
    each rank of ``originals``, with every seed (a plain global rank needs no new run: with α/r
    fixed it *is* the sweep's run at that rank)."""
    from rules import RULES, advised_pattern

    rule = next(r for r in RULES if r.name == rule_name)
    records = [json.loads(x) for x in (source or results).read_text().splitlines() if x]
    for rank in originals:
        source = next(
            (r for r in records if r["kind"] == "train" and r["task"] == task
             and r["rank"] == rank and r["seed"] == 0 and "audit" in r),
            None,
        )  # fmt: skip
        if source is None:
            continue
        k, pattern = advised_pattern(rule, source["audit"]["layers"], rank)
        for seed in SEEDS:
            key = ("pattern", task, str(rank), rule.name, str(seed))
            if key in done(results):
                continue
            spec = TASKS[task]
            recipe = Recipe(
                rank=k, seed=seed, steps=steps, lr=lora_lr(k, LR_POWER[task]), head_lr=HEAD_LR,
                batch=BATCH, max_len=spec["max_len"], rank_pattern=pattern,
            )  # fmt: skip
            start = time.perf_counter()
            model, tokenizer, loss = train(recipe, tasks[task]["train"], spec["labels"])
            accuracy = evaluate(model, tokenizer, tasks[task]["test"], spec["max_len"])
            lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
            append(
                results,
                {
                    "kind": "pattern", "key": list(key), "task": task, "rank": rank,
                    "seed": seed, "rule": rule.name, "global_rank": k, "rank_pattern": pattern,
                    "recipe": asdict(recipe), "accuracy": accuracy, "final_loss": loss,
                    "lora_params": lora, "seconds": round(time.perf_counter() - start, 2),
                },
            )  # fmt: skip
            print(f"pattern {key} k={k} +{len(pattern)} acc={accuracy:.4f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS / "results.jsonl")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--phase", choices=["all", "train", "compress", "pattern"], default="all")
    parser.add_argument(
        "--rule",
        default="k@0.9-median-pow2",
        help="with --phase pattern: the candidate rule whose rank_pattern plan is retrained",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="with --phase pattern: the results file holding the originals (default: --results)",
    )
    parser.add_argument(
        "--ranks",
        type=lambda v: tuple(int(r) for r in v.split(",")),
        default=RANKS,
        help="comma-separated ranks to train (default: all of them), e.g. a first look at a "
        "longer budget",
    )
    parser.add_argument("--tasks", type=lambda v: tuple(v.split(",")), default=tuple(TASKS))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tasks = build(RESULTS / "data.json", train=TRAIN, test=TEST)
    if args.phase == "pattern":
        for task in args.tasks:
            originals = tuple(r for r in args.ranks if r >= 16)
            phase_pattern(tasks, args.results, args.steps, task, args.rule, originals, args.source)
        return
    for task in args.tasks:  # one task finished (trained, then compressed) before the next
        if args.phase in ("all", "train"):
            phase_train(tasks, args.results, args.steps, task, args.ranks)
        if args.phase in ("all", "compress"):
            phase_compress(tasks, args.results, task, exact=False)
    if args.phase in ("all", "compress"):
        phase_compress(tasks, args.results, None, exact=True)


if __name__ == "__main__":
    main()
