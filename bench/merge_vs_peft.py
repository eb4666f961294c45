"""lora-audit merge vs PEFT's ``add_weighted_adapter(combination_type="svd")``, in one run.

The same two adapters on a BERT built from a config (nothing downloaded): ``rs`` with rsLoRA
(r=16, alpha=16: scale alpha/√r = 4) and ``plain`` (r=16, alpha=32: scale 2), both random
(``init_lora_weights=False``), merged as ``0.7·rs + 0.5·plain`` at rank 8 everywhere. Each
method runs in its own process (``--worker``) so that its time and peak memory are its own:

* ``peft svd, rs first``: ``add_weighted_adapter(["rs", "plain"], …)``. PEFT copies the first
  adapter's config for the result, ``use_rslora`` included, and sets ``lora_alpha = r = 8``:
  the merged layers are scaled by 8/√8 = √8 instead of 1.
* ``peft svd, plain first``: the same with the plain adapter first (scale 1: correct).
* ``lora-audit merge``: reads both adapter directories, merges from the factors, writes a PEFT
  directory (time and memory include the reading and the writing).

Every result is loaded by PEFT itself and compared, layer by layer, with the exact optimum: the
rank-8 SVD truncation (numpy, float64) of ``Σ wᵢ·ΔWᵢ`` from PEFT's own ``get_delta_weight``.
``error`` is ``√(Σ_ℓ‖ΔW_ℓ − ΔW*_ℓ‖²/Σ_ℓ‖ΔW*_ℓ‖²)``. ``peak MB`` is the worker's peak resident set
during the merge (Linux ``VmHWM``, reset just before) above what it held when the merge began.

    python bench/merge_vs_peft.py          # under a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTS = {"rs": 0.7, "plain": 0.5}
RANK = 8
ADAPTERS: dict[str, dict[str, Any]] = {
    "rs": dict(r=16, lora_alpha=16, use_rslora=True),
    "plain": dict(r=16, lora_alpha=32),
}
TARGETS = ["query", "key", "value", "dense"]


def base_model() -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=384, num_hidden_layers=1, num_attention_heads=12, intermediate_size=1536
    )
    return transformers.BertModel(config)


def deltas(model: Any, adapter: str) -> dict[str, np.ndarray]:
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            key = name.removeprefix("base_model.model.")
            out[key] = module.get_delta_weight(adapter).detach().double().numpy()
    return out


def setup(root: Path) -> None:
    import peft
    import torch

    for i, (name, config) in enumerate(ADAPTERS.items()):
        torch.manual_seed(100 + i)
        lora = peft.LoraConfig(init_lora_weights=False, target_modules=TARGETS, **config)
        peft.get_peft_model(base_model(), lora).save_pretrained(str(root / name))


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> float:
    """Reset the peak resident set (Linux: VmHWM) and return the current one, in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def peak_mb() -> float:
    """The peak resident set since :func:`reset_peak`, in MB."""
    return _status_mb("VmHWM")


def worker(method: str, root: Path) -> dict[str, float]:
    import peft

    if method.startswith("peft"):
        order = ["rs", "plain"] if method == "peft-rs-first" else ["plain", "rs"]
        model = peft.PeftModel.from_pretrained(base_model(), str(root / order[0]), order[0])
        model.load_adapter(str(root / order[1]), adapter_name=order[1])
        before, start = reset_peak(), time.perf_counter()
        model.add_weighted_adapter(
            order, [WEIGHTS[n] for n in order], "merged", combination_type="svd", svd_rank=RANK
        )
        seconds, after = time.perf_counter() - start, peak_mb()
        result = deltas(model, "merged")
    else:
        from lora_audit.commands.merge import MergeOptions, merge_adapters
        from lora_audit.decisions.compress_ranks import RankRule
        from lora_audit.formats import load_adapter

        out = root / "lora-audit-merged"
        options = MergeOptions(
            rule=RankRule(mode="rank", value=RANK), output=out, weights=list(WEIGHTS.values())
        )
        before, start = reset_peak(), time.perf_counter()
        adapters = [load_adapter(root / name) for name in WEIGHTS]
        merge_adapters(adapters, options=options)
        seconds, after = time.perf_counter() - start, peak_mb()
        result = deltas(peft.PeftModel.from_pretrained(base_model(), str(out)), "default")
    np.savez(root / f"{method}.npz", **result)
    return {"seconds": seconds, "peak_mb": after - before}


def optimum(root: Path) -> dict[str, np.ndarray]:
    import peft

    exact: dict[str, Any] = {}
    for name, w in WEIGHTS.items():
        model = peft.PeftModel.from_pretrained(base_model(), str(root / name), name)
        for key, delta in deltas(model, name).items():
            exact[key] = exact.get(key, 0) + w * delta
    out = {}
    for key, delta in exact.items():
        u, s, vh = np.linalg.svd(delta, full_matrices=False)
        out[key] = (u[:, :RANK] * s[:RANK]) @ vh[:RANK]
    return out


def error(result: Path, best: dict[str, np.ndarray]) -> float:
    got = np.load(result)
    lost = sum(float(np.linalg.norm(got[k] - best[k]) ** 2) for k in best)
    return float(np.sqrt(lost / sum(float(np.linalg.norm(b) ** 2) for b in best.values())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["peft-rs-first", "peft-plain-first", "lora-audit"])
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.dir)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup(root)
        best = optimum(root)
        rows = []
        for method in ("peft-rs-first", "peft-plain-first", "lora-audit"):
            command = [sys.executable, __file__, "--worker", method, "--dir", str(root)]
            line = subprocess.run(
                command, check=True, capture_output=True, text=True, timeout=300
            ).stdout
            figures = json.loads(line.strip().splitlines()[-1])
            rows.append((method, figures, error(root / f"{method}.npz", best)))
    print(f"{len(best)} layers, 0.7·rs(r=16, rsLoRA) + 0.5·plain(r=16) → rank {RANK}")
    print(f"{'method':<18} {'seconds':>8} {'peak MB':>8} {'error vs optimum':>17}")
    for method, figures, err in rows:
        print(f"{method:<18} {figures['seconds']:>8.3f} {figures['peak_mb']:>8.1f} {err:>17.2e}")


if __name__ == "__main__":
    main()
