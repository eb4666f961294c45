"""Synthetic PEFT adapters with Llama shapes and a planted, decaying spectrum.

Files are generated layer by layer with fixed seeds, streamed to disk (never more than one
layer in memory) and reused by later runs when their stamp matches.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """Decoder dimensions of a Llama-family model."""

    name: str
    hidden: int
    intermediate: int
    kv: int  # output width of k_proj / v_proj (hidden unless grouped-query attention)
    layers: int

    def modules(self) -> list[tuple[str, int, int]]:
        """``(module suffix, out, in)`` of the seven adapted projections of one layer."""
        h, i, kv = self.hidden, self.intermediate, self.kv
        return [
            ("self_attn.q_proj", h, h),
            ("self_attn.k_proj", kv, h),
            ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, h),
            ("mlp.gate_proj", i, h),
            ("mlp.up_proj", i, h),
            ("mlp.down_proj", h, i),
        ]

    def file_bytes(self, rank: int, layers: int | None = None) -> int:
        """Bytes of tensor data of a bf16 adapter of rank ``rank``."""
        n = self.layers if layers is None else layers
        return 2 * rank * n * sum(o + i for _, o, i in self.modules())


SHAPES = {
    # TinyLlama-1.1B: small enough for --quick (dense SVDs take seconds, not minutes).
    "1b": ModelShape("1b", hidden=2048, intermediate=5632, kv=256, layers=22),
    "7b": ModelShape("7b", hidden=4096, intermediate=11008, kv=4096, layers=32),
    "70b": ModelShape("70b", hidden=8192, intermediate=28672, kv=1024, layers=80),
}


def planted_spectrum(rank: int, *, layer: int, module: int) -> list[float]:
    """Singular values ``σ_k = c·exp(-6k/r)``: the first ≈0.38·r of them hold 99% of the energy."""
    scale = 0.5 + 0.05 * ((layer * 7 + module) % 11)
    return [scale * math.exp(-6.0 * k / rank) for k in range(rank)]


def planted_factors(out: int, inp: int, rank: int, *, seed: int, spectrum: Sequence[float]):  # type: ignore[no-untyped-def]
    """``B (out, r)``, ``A (r, in)`` in bf16 with ``B·A ≈ U·diag(spectrum)·Vᵀ``.

    ``U`` and ``V`` are random orthonormal columns (QR of Gaussian matrices), each factor
    carries ``√σ``, and a random orthogonal ``r×r`` mix hides the structure. Rounding to bf16
    perturbs the spectrum by about 2⁻⁹ relative; every tool measures the stored values.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    root = torch.tensor(spectrum, dtype=torch.float32).sqrt()
    u = torch.linalg.qr(torch.randn(out, rank, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(inp, rank, generator=gen)).Q
    mix = torch.linalg.qr(torch.randn(rank, rank, generator=gen)).Q
    b = (u * root) @ mix
    a = mix.mT @ (v * root).mT
    return b.to(torch.bfloat16).contiguous(), a.to(torch.bfloat16).contiguous()


def adapter_keys(shape: ModelShape, rank: int, layers: int) -> Iterator[tuple[str, list[int]]]:
    """``(key, shape)`` of every tensor, in the order they are written."""
    for layer in range(layers):
        for module, out, inp in shape.modules():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            yield f"{prefix}.lora_A.weight", [rank, inp]
            yield f"{prefix}.lora_B.weight", [out, rank]


def adapter_dir(out: Path, shape: ModelShape, rank: int, layers: int) -> Path:
    """Where the adapter of ``shape`` at ``rank`` with ``layers`` decoder layers is cached."""
    tag = f"{shape.name}-r{rank}" + (f"-L{layers}" if layers != shape.layers else "")
    return out / "adapters" / tag


def _config(shape: ModelShape, rank: int, stamp: dict[str, Any]) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "use_rslora": False,
        "use_dora": False,
        "bias": "none",
        "rank_pattern": {},
        "alpha_pattern": {},
        "target_modules": [m.split(".")[-1] for m, _, _ in shape.modules()],
        "base_model_name_or_path": f"synthetic-llama-{shape.name}",
        "lora_audit_bench": stamp,
    }


def _cached(weights: Path, config: Path, stamp: dict[str, Any]) -> bool:
    if not (weights.is_file() and config.is_file()):
        return False
    try:
        return bool(json.loads(config.read_text()).get("lora_audit_bench") == stamp)
    except (OSError, json.JSONDecodeError):
        return False


def _header(shape: ModelShape, rank: int, layers: int) -> bytes:
    """The safetensors header: keys, dtypes, shapes and byte offsets are known in advance."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, dims in adapter_keys(shape, rank, layers):
        nbytes = 2 * math.prod(dims)
        header[key] = {"dtype": "BF16", "shape": dims, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def write_adapter(directory: Path, shape: ModelShape, rank: int, *, layers: int) -> Path:
    """Write a PEFT adapter layer by layer (never more than one layer in memory).

    The safetensors file is written directly: the header, then the data of each tensor as it
    is generated. An adapter already written with the same stamp is reused as it is.
    """
    import torch

    weights = directory / "adapter_model.safetensors"
    config = directory / "adapter_config.json"
    stamp = {"shape": shape.name, "rank": rank, "layers": layers, "generator": 2}
    if _cached(weights, config, stamp):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    raw = _header(shape, rank, layers)
    tmp = weights.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for layer in range(layers):
            for m, (_, out, inp) in enumerate(shape.modules()):
                b, a = planted_factors(
                    out,
                    inp,
                    rank,
                    seed=1000 * layer + m,
                    spectrum=planted_spectrum(rank, layer=layer, module=m),
                )
                for t in (a, b):  # same order as adapter_keys
                    fh.write(t.view(torch.int16).numpy().tobytes())
    tmp.replace(weights)
    config.write_text(json.dumps(_config(shape, rank, stamp), indent=2))
    return directory
