"""Build adapters with known factors in a temporary directory (no PEFT needed).

torch is optional here: with torch installed, factors are torch tensors (any dtype, bf16
included) and files are written by ``safetensors.torch``; without it, they are numpy arrays
written by ``safetensors.numpy`` (the torch-free half of CI).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

HAS_TORCH = importlib.util.find_spec("torch") is not None


@dataclass
class FakeLayer:
    """One LoRA layer: module name and factors B (out, r), A (r, in)."""

    name: str
    b: torch.Tensor | np.ndarray
    a: torch.Tensor | np.ndarray
    embedding: bool = False


@dataclass
class FakeAdapter:
    layers: list[FakeLayer]
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def planted_factors(
    *,
    out: int,
    inp: int,
    rank: int,
    spectrum: np.ndarray,
    seed: int = 0,
    dtype: Any = None,
) -> tuple[Any, Any]:
    """B (out, r), A (r, in) whose product has exactly the singular values ``spectrum``.

    ``dtype`` is a torch dtype (torch tensors), a numpy dtype (numpy arrays), or ``None``:
    float32 torch tensors where torch is installed, float32 numpy arrays otherwise.
    """
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
    if dtype is None:
        if not HAS_TORCH:
            return b.astype(np.float32), a.astype(np.float32)
        import torch

        dtype = torch.float32
    if isinstance(dtype, (type, np.dtype, str)):
        return b.astype(dtype), a.astype(dtype)
    import torch

    return torch.tensor(b, dtype=dtype), torch.tensor(a, dtype=dtype)


def save_tensors(tensors: Mapping[str, Any], path: Path, *, metadata: Mapping[str, str]) -> None:
    """Write torch tensors with ``safetensors.torch``, numpy arrays with ``safetensors.numpy``."""
    if any(not isinstance(t, np.ndarray) for t in tensors.values()):
        import torch
        from safetensors.torch import save_file

        contiguous = {
            k: torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t
            for k, t in tensors.items()
        }
        contiguous = {k: t.contiguous() for k, t in contiguous.items()}
        save_file(contiguous, str(path), metadata=dict(metadata))
        return
    from safetensors.numpy import save_file as save_numpy

    arrays = {k: np.ascontiguousarray(t) for k, t in tensors.items()}
    save_numpy(arrays, str(path), metadata=dict(metadata))


def write_peft(
    directory: Path,
    adapter: FakeAdapter,
    *,
    with_config: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``adapter_model.safetensors`` (+ ``adapter_config.json``) like PEFT does."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Any] = {}
    for layer in adapter.layers:
        prefix = f"base_model.model.{layer.name}"
        if layer.embedding:
            tensors[f"{prefix}.lora_embedding_A"] = layer.a
            tensors[f"{prefix}.lora_embedding_B"] = layer.b
        else:
            tensors[f"{prefix}.lora_A.weight"] = layer.a
            tensors[f"{prefix}.lora_B.weight"] = layer.b
    tensors.update(adapter.extra)
    save_tensors(
        tensors,
        directory / "adapter_model.safetensors",
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


#: The seven projections of a Llama-style decoder block.
LLAMA_MODULES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def write_deep_peft(
    directory: Path,
    *,
    blocks: int = 32,
    rank: int = 16,
    width: int = 24,
    steepness: tuple[float, float] = (0.1, 1.5),
    seed: int = 0,
) -> Path:
    """A PEFT adapter of ``blocks × 7`` Llama-style layers (224 by default), rank ``rank``.

    Each layer's spectrum decays as ``σᵢ ∝ (i + 1)^-p`` with ``p`` across ``steepness``, varying
    smoothly with depth and module: 0.1 is flat (stable rank 11 at r=16), 1.5 steep (stable
    rank 1.2), so the default spans most of ``[1, rank]``; ``(0.02, 0.3)`` gives a noisy adapter
    whose stable ranks all lie high (5.7 to 14.8). ``width`` is both ``in`` and ``out``.
    """
    layers = []
    for block in range(blocks):
        for m, module in enumerate(LLAMA_MODULES):
            where = (block / max(blocks - 1, 1) + m / len(LLAMA_MODULES)) % 1.0
            p = steepness[0] + (steepness[1] - steepness[0]) * where
            spectrum = np.array([(i + 1.0) ** -p for i in range(rank)])
            b, a = planted_factors(
                out=width, inp=width, rank=rank, spectrum=spectrum, seed=seed + 7 * block + m
            )
            layers.append(FakeLayer(f"model.layers.{block}.{module}", b, a))
    return write_peft(directory, FakeAdapter(layers, {"r": rank, "lora_alpha": rank}))
