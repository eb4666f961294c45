"""The in-memory model of an adapter: which layers it adapts and where their factors live.

An :class:`Adapter` holds no tensor data. Each :class:`LoraLayer` names the keys of its two
factors in a :class:`TensorSource`; the spectral engine loads them group by group, so that
no more than one group of equal-shape layers is held in memory at a time.

Conventions
-----------
Every layer is a thin product ``ΔW = scale · B @ A`` with ``B`` of shape ``(out, rank)`` and
``A`` of shape ``(rank, in)`` once the stored tensors are flattened to 2-D:

* Linear (and GPT-2 ``Conv1D``): stored as is.
* Conv: ``A`` of shape ``(rank, in, kh, kw)`` is flattened to ``(rank, in·kh·kw)``;
  ``B`` of shape ``(out, rank, 1, 1)`` to ``(out, rank)``.
* Embedding (PEFT ``lora_embedding_A`` ``(rank, vocab)``, ``lora_embedding_B``
  ``(dim, rank)``): ``ΔW = scale · (B @ A)ᵀ``; singular values are those of ``B @ A``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch


class LayerKind(StrEnum):
    """What kind of module a LoRA layer adapts."""

    LINEAR = "linear"
    CONV = "conv"
    EMBEDDING = "embedding"


class TensorSource(Protocol):
    """Where tensors are read from (a memory-mapped safetensors file, or memory in tests)."""

    def get(self, key: str) -> torch.Tensor:
        """Return the tensor stored under ``key``, in its stored dtype."""
        ...


@dataclass(frozen=True, kw_only=True)
class LoraLayer:
    """One adapted module: ``ΔW = scale · B @ A``.

    Attributes
    ----------
    name
        The module's path in the base model (``encoder.layer.0.attention.self.query``).
    kind
        Linear, conv or embedding.
    a_key, b_key
        Keys of the factors ``A`` (stored shape ``a_shape``) and ``B`` (``b_shape``).
    out_features, in_features
        Shape of ``B @ A`` as a matrix: ``B`` is ``(out_features, rank)`` and ``A`` is
        ``(rank, in_features)`` after flattening conv kernels.
    rank
        Nominal rank ``r`` (rows of ``A``).
    alpha
        ``lora_alpha`` that applies to this layer after patterns, or ``None`` when unknown.
    scale
        The factor ``s`` in ``ΔW = s·B·A``.
    dtype
        Stored dtype of the factors (``"F32"``, ``"BF16"``, …).
    weight_shape
        Shape of the adapted weight as the base model stores it (``(out, in)``, ``(out, in,
        kh, kw)``, or ``(vocab, dim)`` for an embedding).
    extra_keys
        Other tensors that belong to the module (``lora_B.bias``, DoRA magnitude) and are
        passed through unchanged.
    dora
        Whether the layer is DoRA; its spectrum is still that of ``s·B·A``.
    """

    name: str
    kind: LayerKind
    a_key: str
    b_key: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    out_features: int
    in_features: int
    rank: int
    alpha: float | None
    scale: float
    dtype: str
    weight_shape: tuple[int, ...]
    extra_keys: tuple[str, ...] = ()
    dora: bool = False

    @property
    def params(self) -> int:
        """Number of LoRA parameters, ``rank · (in + out)``."""
        return self.rank * (self.in_features + self.out_features)

    @property
    def params_per_rank(self) -> int:
        """Parameters one unit of rank costs, ``in + out``."""
        return self.in_features + self.out_features

    @property
    def group_key(self) -> tuple[int, int, int]:
        """Layers with equal ``(out, rank, in)`` are batched together."""
        return (self.out_features, self.rank, self.in_features)


@dataclass(frozen=True, kw_only=True)
class Adapter:
    """An adapter read from disk: its layers, pass-through tensors and metadata.

    Attributes
    ----------
    path
        The file or directory the user named.
    tensor_file
        The safetensors file the tensors come from.
    format
        Format name (``"peft"``).
    layers
        Adapted layers in file order.
    passthrough_keys
        Tensors that are not LoRA factors (``modules_to_save``, biases, DoRA magnitudes).
    config
        The adapter's configuration as read (``adapter_config.json`` for PEFT), unchanged.
    metadata
        The safetensors header metadata (string to string).
    base_model
        Name or path of the base model, if recorded.
    warnings
        Problems that did not stop reading (e.g. scale assumed to be 1).
    source
        Where the tensor data is read from.
    """

    path: Path
    tensor_file: Path
    format: str
    layers: tuple[LoraLayer, ...]
    passthrough_keys: tuple[str, ...] = ()
    modules_to_save: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    base_model: str | None = None
    warnings: tuple[str, ...] = ()
    source: TensorSource | None = field(default=None, compare=False, repr=False)

    def load_factors(self, layer: LoraLayer) -> tuple[torch.Tensor, torch.Tensor]:
        """Load ``(B, A)`` of one layer as 2-D tensors in their stored dtype.

        Returns
        -------
        b : torch.Tensor of shape (out_features, rank)
        a : torch.Tensor of shape (rank, in_features)
        """
        if self.source is None:
            raise RuntimeError("adapter has no tensor source")
        a = self.source.get(layer.a_key).reshape(layer.rank, layer.in_features)
        b = self.source.get(layer.b_key).reshape(layer.out_features, layer.rank)
        return b, a


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``layers.2`` before ``layers.10``."""
    import re

    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part
    )


def lora_scale(*, alpha: float, rank: int, rslora: bool) -> float:
    """PEFT's scale: ``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank
