"""Build adapters with known factors in a temporary directory (no PEFT needed)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file


@dataclass
class FakeLayer:
    """One LoRA layer: module name and factors B (out, r), A (r, in)."""

    name: str
    b: torch.Tensor
    a: torch.Tensor
    embedding: bool = False


@dataclass
class FakeAdapter:
    layers: list[FakeLayer]
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def planted_factors(
    *,
    out: int,
    inp: int,
    rank: int,
    spectrum: np.ndarray,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """B (out, r), A (r, in) whose product has exactly the singular values ``spectrum``."""
    gen = np.random.default_rng(seed)
    k = len(spectrum)
    u, _ = np.linalg.qr(gen.standard_normal((out, k)))
    v, _ = np.linalg.qr(gen.standard_normal((inp, k)))
    s = np.sqrt(np.asarray(spectrum, dtype=np.float64))
    b = np.zeros((out, rank))
    a = np.zeros((rank, inp))
    b[:, :k] = u * s
    a[:k, :] = (v * s).T
    mix, _ = np.linalg.qr(gen.standard_normal((rank, rank)))  # hide the structure
    b, a = b @ mix, mix.T @ a
    return torch.tensor(b, dtype=dtype), torch.tensor(a, dtype=dtype)


def write_peft(
    directory: Path,
    adapter: FakeAdapter,
    *,
    with_config: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``adapter_model.safetensors`` (+ ``adapter_config.json``) like PEFT does."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for layer in adapter.layers:
        prefix = f"base_model.model.{layer.name}"
        if layer.embedding:
            tensors[f"{prefix}.lora_embedding_A"] = layer.a.contiguous()
            tensors[f"{prefix}.lora_embedding_B"] = layer.b.contiguous()
        else:
            tensors[f"{prefix}.lora_A.weight"] = layer.a.contiguous()
            tensors[f"{prefix}.lora_B.weight"] = layer.b.contiguous()
    tensors.update(adapter.extra)
    save_file(
        tensors,
        str(directory / "adapter_model.safetensors"),
        metadata={"format": "pt", **(metadata or {})},
    )
    if with_config:
        config = {
            "peft_type": "LORA",
            "r": adapter.layers[0].a.shape[0],
            "lora_alpha": 16,
            "use_rslora": False,
            "rank_pattern": {},
            "alpha_pattern": {},
            "base_model_name_or_path": "tiny-test-model",
            **adapter.config,
        }
        (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory
