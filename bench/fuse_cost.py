"""Cost of ``inspect --fuse-into`` on 7B-shaped layers, extrapolated to a whole 7B model.

Writing a 14 GB base is not needed to time it: the work is per layer and streams one layer at
a time, so this builds four Llama-2-7B-shaped layers (q_proj and o_proj 4096×4096, up_proj
11008×4096, down_proj 4096×11008, bf16) in a temporary safetensors file with a PEFT LoRA
(r=16) on them, times :func:`lora_audit.commands.fuse_survival.fuse_survival` per layer and
scheme, and extrapolates to the 32 blocks of a 7B model (q, k, v, o: 4×16.8M entries;
gate, up, down: 3×45.1M) for two common targets: q_proj+v_proj, and every linear layer.
Peak memory is the process's maximum RSS.

    python bench/fuse_cost.py [--schemes q8_0,q4_0,nf4]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from lora_audit.commands.fuse_survival import fuse_survival
from lora_audit.formats import load_adapter
from lora_audit.formats.base_model import match_base_weights, open_base

SHAPES = {  # module: (out, in)
    "q_proj": (4096, 4096),
    "o_proj": (4096, 4096),
    "up_proj": (11008, 4096),
    "down_proj": (4096, 11008),
}
RANK = 16
BLOCKS = 32


def build(root: Path) -> tuple[Path, Path]:
    gen = torch.Generator().manual_seed(0)
    base, lora = {}, {}
    for name, (out, inp) in SHAPES.items():
        attn = "self_attn" if name.endswith(("q_proj", "o_proj")) else "mlp"
        module = f"model.layers.0.{attn}.{name}"
        base[f"{module}.weight"] = (torch.randn(out, inp, generator=gen) * 0.02).bfloat16()
        prefix = f"base_model.model.{module}"
        lora[f"{prefix}.lora_A.weight"] = torch.randn(RANK, inp, generator=gen) / inp**0.5
        lora[f"{prefix}.lora_B.weight"] = torch.randn(out, RANK, generator=gen) * 1e-3
    (root / "base").mkdir()
    save_file(base, str(root / "base" / "model.safetensors"))
    (root / "adapter").mkdir()
    save_file(lora, str(root / "adapter" / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": 2 * RANK,
        "target_modules": list(SHAPES),
        "base_model_name_or_path": "llama-2-7b-shaped",
    }
    (root / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    return root / "adapter", root / "base"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schemes", default="q8_0,q4_0,nf4")
    schemes = tuple(parser.parse_args().schemes.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir, base_dir = build(Path(tmp))
        adapter = load_adapter(adapter_dir)
        base = open_base(base_dir)
        seconds: dict[str, dict[str, float]] = {}
        for layer in adapter.layers:
            one = adapter.__class__(**{**adapter.__dict__, "layers": (layer,)})
            match = match_base_weights(one, base)
            for scheme in schemes:
                start = time.perf_counter()
                fuse_survival(one, base, match, schemes=(scheme,))  # type: ignore[arg-type]
                took = time.perf_counter() - start
                seconds.setdefault(scheme, {})[layer.name.rsplit(".", 1)[-1]] = took
                shape = f"{layer.out_features}×{layer.in_features}"
                print(f"{layer.name:45s} {shape} {scheme}: {took:6.1f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")
    for scheme, t in seconds.items():
        square = (t["q_proj"] + t["o_proj"]) / 2
        mlp = (t["up_proj"] + t["down_proj"]) / 2
        qv = BLOCKS * 2 * square
        every = BLOCKS * (4 * square + 3 * mlp)
        print(
            f"{scheme}: 7B extrapolated — q_proj+v_proj {qv / 60:.1f} min, "
            f"every linear layer {every / 60:.1f} min"
        )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
