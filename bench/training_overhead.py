"""What ``LoraAuditCallback`` costs a training run: step time with and without it.

A tiny Llama built from a config (no download) with LoRA on all seven projections trains for
``--steps`` steps on random tokens, once without the callback and once with
``LoraAuditCallback(every_n_steps=--every)``, alternating ``--repeats`` times; the runs are
otherwise identical (same seed, data, batch, no checkpoints, no report_to). Printed: the
median step time of each, their difference, and the time spent inside the callback itself
(its audits, each with its ``Trainer.log``), which is the part of the difference that is not
noise. The pipeline's modules are imported once before the runs (a one-time cost of the
first audit in a process, not of each interval). On the CPU the times are
the process's CPU time (all threads), so that a machine shared with other work still gives
a figure; with ``--device cuda`` they are wall time.

    python bench/training_overhead.py                       # 300 steps, every 100, 3 repeats
    python bench/training_overhead.py --steps 600 --every 50 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def make_model(args: argparse.Namespace) -> Any:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 2,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets)
    return get_peft_model(transformers.LlamaForCausalLM(config), lora)


def dataset(n: int, length: int) -> list[dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(1)
    return [
        {"input_ids": ids, "labels": ids.clone()}
        for ids in (torch.randint(0, 512, (length,), generator=g) for _ in range(n))
    ]


def train_once(args: argparse.Namespace, *, audit: bool) -> tuple[float, float]:
    """``(CPU seconds per step, CPU seconds inside the callback in all)`` of one run.

    CPU time of the process (all its threads), not wall time: on a shared machine the wall
    clock measures the neighbours; on a GPU (``--device cuda``) wall time is what counts.
    """
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.device == "cuda" else time.process_time

    from lora_audit.integrations.transformers import LoraAuditCallback

    inside = 0.0

    class Timed(LoraAuditCallback):
        def on_step_end(self, *a: Any, **kw: Any) -> None:
            nonlocal inside
            start = clock()
            super().on_step_end(*a, **kw)
            inside += clock() - start

    with tempfile.TemporaryDirectory() as out:
        training = transformers.TrainingArguments(
            output_dir=str(Path(out)),
            per_device_train_batch_size=args.batch,
            max_steps=args.steps,
            learning_rate=1e-3,
            logging_steps=args.every,
            save_strategy="no",
            report_to="none",
            use_cpu=args.device == "cpu",
            disable_tqdm=True,
            seed=0,
        )
        callbacks = [Timed(every_n_steps=args.every, device=args.device)] if audit else []
        trainer = transformers.Trainer(
            model=make_model(args),
            args=training,
            train_dataset=dataset(args.batch * args.steps, args.length),
            callbacks=callbacks,
        )
        start = clock()
        trainer.train()
        seconds = clock() - start
    return seconds / args.steps, inside


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    import torch

    import lora_audit

    torch.set_num_threads(args.threads)
    lora_audit.inspect_model(make_model(args), device=args.device)  # one-time imports, not timed
    plain: list[float] = []
    audited: list[float] = []
    inside: list[float] = []
    for _ in range(args.repeats):
        plain.append(train_once(args, audit=False)[0])
        step, spent = train_once(args, audit=True)
        audited.append(step)
        inside.append(spent)
    base, with_cb = statistics.median(plain), statistics.median(audited)
    audits = args.steps // args.every
    per_audit = statistics.median(inside) / max(audits, 1)
    result = {
        "step_ms": 1e3 * base,
        "step_ms_with_callback": 1e3 * with_cb,
        "difference": with_cb / base - 1,
        "audit_ms": 1e3 * per_audit,
        "callback_share": statistics.median(inside) / (with_cb * args.steps),
    }
    print(
        f"{args.steps} steps, LoRA r={args.rank} on 7×{args.layers} projections "
        f"(hidden {args.hidden}), batch {args.batch}×{args.length}, {args.device}, "
        f"{args.threads} torch thread(s), median of {args.repeats}, "
        f"{'wall' if args.device == 'cuda' else 'CPU'} time:\n"
        f"  step time without the callback   {result['step_ms']:.2f} ms\n"
        f"  step time with it (every {args.every:<4})  {result['step_ms_with_callback']:.2f} ms "
        f"({result['difference']:+.2%}, run-to-run noise included)\n"
        f"  one audit ({7 * args.layers} layers)        {result['audit_ms']:.2f} ms\n"
        f"  time inside the callback         {result['callback_share']:.3%} of the run"
    )
    return result


if __name__ == "__main__":
    main()
