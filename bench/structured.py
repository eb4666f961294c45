"""LoHa / LoKr / Tucker layers: lora-audit's structured paths against the dense SVD.

For SDXL-sized layers this times, in one run, (a) lora-audit's path — the thin factors of the
structure (face-splitting for LoHa, Kronecker factors for LoKr, the folded Tucker core) and
the factored singular values — and (b) what other tools do: materialise ΔW and run
``torch.linalg.svdvals`` on it. Both in float64 on the CPU, min and median over repeats; the
results must agree to 1e-6·σ₁ (checked).

    python bench/structured.py            # about a minute on 2 cores
    python bench/structured.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lora_audit.adapter import LayerKind, LoraLayer, Structure, thin_factors
from lora_audit.linalg.spectral import kron_singular_values, singular_values

D = torch.float64


def loha_case(
    out: int, inp: int, dim: int, g: torch.Generator
) -> tuple[LoraLayer, dict[str, torch.Tensor]]:
    t = {
        "w1_a": torch.randn(out, dim, generator=g, dtype=D),
        "w1_b": torch.randn(dim, inp, generator=g, dtype=D),
        "w2_a": torch.randn(out, dim, generator=g, dtype=D),
        "w2_b": torch.randn(dim, inp, generator=g, dtype=D),
    }
    return _layer("loha", Structure.LOHA, out, inp, dim * dim), t


def lokr_case(
    a: int, o2: int, i2: int, dim: int, g: torch.Generator
) -> tuple[LoraLayer, dict[str, torch.Tensor]]:
    t = {
        "w1": torch.randn(a, a, generator=g, dtype=D),
        "w2_a": torch.randn(o2, dim, generator=g, dtype=D),
        "w2_b": torch.randn(dim, i2, generator=g, dtype=D),
    }
    return _layer("lokr", Structure.LOKR, a * o2, a * i2, a * dim), t


def kron_case(
    a: int, o2: int, i2: int, g: torch.Generator
) -> tuple[LoraLayer, dict[str, torch.Tensor]]:
    t = {
        "w1": torch.randn(a, a, generator=g, dtype=D),
        "w2": torch.randn(o2, i2, generator=g, dtype=D),
    }
    return _layer("kron", Structure.KRON, a * o2, a * i2, a * min(o2, i2)), t


def tucker_case(
    out: int, inp: int, k: int, dim: int, g: torch.Generator
) -> tuple[LoraLayer, dict[str, torch.Tensor]]:
    t = {
        "up": torch.randn(out, dim, 1, 1, generator=g, dtype=D),
        "mid": torch.randn(dim, dim, k, k, generator=g, dtype=D),
        "down": torch.randn(dim, inp, 1, 1, generator=g, dtype=D),
    }
    return _layer("tucker", Structure.TUCKER, out, inp * k * k, dim), t


def _layer(name: str, s: Structure, out: int, inp: int, rank: int) -> LoraLayer:
    return LoraLayer(
        name=name,
        kind=LayerKind.LINEAR,
        a_key="",
        b_key="",
        a_shape=(),
        b_shape=(),
        out_features=out,
        in_features=inp,
        rank=rank,
        alpha=None,
        scale=1.0,
        dtype="F64",
        weight_shape=(out, inp),
        structure=s,
    )


def dense(layer: LoraLayer, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """ΔW materialised the way loaders do."""
    if layer.structure is Structure.LOHA:
        return (t["w1_a"] @ t["w1_b"]) * (t["w2_a"] @ t["w2_b"])
    if layer.structure is Structure.LOKR:
        return torch.kron(t["w1"], t["w2_a"] @ t["w2_b"])
    if layer.structure is Structure.KRON:
        return torch.kron(t["w1"], t["w2"])
    w = torch.einsum(
        "i j k l, j r, i p -> p r k l", t["mid"], t["down"].flatten(1), t["up"].flatten(1).T
    )
    return w.reshape(w.shape[0], -1)


def structured(layer: LoraLayer, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """What lora-audit's engine does for the layer (``engine.spectra``).

    The structure's thin factors (numpy float64, :func:`thin_factors`), then the factored
    singular values; a full Kronecker product from the SVDs of its two factors.
    """
    f = {role: v.numpy() for role, v in t.items()}
    if layer.structure is Structure.KRON:  # σ(kron) = all products σᵢ(W1)·σⱼ(W2)
        return torch.from_numpy(kron_singular_values(f["w1"], f["w2"], rank=layer.rank))
    b, a = (torch.from_numpy(x) for x in thin_factors(layer, f))
    return singular_values(b.unsqueeze(0), a.unsqueeze(0), method="auto")[0]


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[list[float], torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    assert out is not None
    return times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small layers, 2 repeats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    if args.quick:
        cases = [
            ("LoHa 320×320 dim 8", loha_case(320, 320, 8, g)),
            ("LoKr 4⊗(80×80, r 8)", lokr_case(4, 80, 80, 8, g)),
            ("LoKr 4⊗(80×80) full", kron_case(4, 80, 80, g)),
            ("LoCon Tucker 320×320×3×3 dim 8", tucker_case(320, 320, 3, 8, g)),
        ]
        repeats = 2
    else:
        cases = [
            ("LoHa 1280×1280 dim 16 (SDXL attn)", loha_case(1280, 1280, 16, g)),
            ("LoHa 1280×5120 dim 16 (SDXL ff)", loha_case(1280, 5120, 16, g)),
            ("LoKr 8⊗(160×160, r 16)", lokr_case(8, 160, 160, 16, g)),
            ("LoKr 8⊗(160×640) full", kron_case(8, 160, 640, g)),
            ("LoCon Tucker 640×640×3×3 dim 16", tucker_case(640, 640, 3, 16, g)),
        ]
        repeats = args.repeats
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, CPU\n")
    print(
        "| layer | ΔW shape | structured: min / median s | dense SVD: min / median s | speed-up |"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for label, (layer, t) in cases:
        fast_t, fast = timed(lambda layer=layer, t=t: structured(layer, t), repeats)
        slow_t, slow = timed(
            lambda layer=layer, t=t: torch.linalg.svdvals(dense(layer, t)), repeats
        )
        n = min(fast.numel(), slow.numel())
        err = float((fast[:n] - slow[:n]).abs().max() / slow[0])
        assert err <= 1e-6, (label, err)
        ratio = statistics.median(slow_t) / statistics.median(fast_t)
        rows.append(
            {
                "layer": label,
                "shape": [layer.out_features, layer.in_features],
                "structured_s": fast_t,
                "dense_s": slow_t,
                "speedup": ratio,
                "max_rel_diff": err,
            }
        )
        print(
            f"| {label} | {layer.out_features}×{layer.in_features} | "
            f"{min(fast_t):.4f} / {statistics.median(fast_t):.4f} | "
            f"{min(slow_t):.3f} / {statistics.median(slow_t):.3f} | {ratio:.0f}× |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
