"""The reports of a full fine-tune: ``inspect --base BASE TUNED`` and ``extract``.

A layer's columns have the names of the LoRA audit's (:class:`~lora_audit.report.LayerReport`
for ``ΔW``, :class:`~lora_audit.report.BaseLayerReport` for ``W`` and ``W + ΔW``), so the two
reports can be read side by side; ``ΔW = W_tuned − W_base`` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lora_audit.report.common import (
    SCHEMA_VERSION,
    NotebookRepr,
    ToolInfo,
    path_repr,
    short_repr,
    to_dict,
)


@dataclass(frozen=True, kw_only=True)
class FullSettings:
    """The options the numbers depend on (``tolerance``: certified relative accuracy of σᵢ)."""

    energy: float
    device: str
    tolerance: float
    high_rank_fraction: float


@dataclass(frozen=True, kw_only=True)
class FullLayerReport:
    """The spectrum of one layer's ``ΔW = W_tuned − W_base`` and its base-aware numbers.

    ``singular_values`` are the top ``σᵢ`` found (at least ``energy_rank`` of them), each
    certified to ``bound`` relative; ``energy`` is ``C(k)`` for ``k = 1…len(singular_values)``
    against the exact ``‖ΔW‖_F²``. ``method`` is ``krylov``, ``full_svd`` or ``zero``;
    ``high_rank`` says that ``energy_rank`` exceeds the report's ``high_rank_fraction`` of
    ``min(out, in)``. ``params_at_rank`` is ``energy_rank·(out + in)``, the size of the LoRA
    that ``extract --energy τ`` writes for the layer.
    """

    name: str
    key: str
    base_key: str
    kind: str
    shape: tuple[int, int]
    weight_shape: tuple[int, ...]
    dtype: str
    singular_values: tuple[float, ...]
    frobenius_norm: float
    spectral_norm: float
    stable_rank: float
    energy: tuple[float, ...]
    energy_rank: int
    energy_rank_exact: bool
    method: str
    high_rank: bool
    bound: float
    weight_frobenius_norm: float
    weight_spectral_norm: float
    weight_stable_rank: float
    merged_frobenius_norm: float
    merged_spectral_norm: float
    merged_stable_rank: float
    stable_rank_change: float
    relative_frobenius: float
    relative_spectral: float
    params: int
    params_at_rank: int


@dataclass(frozen=True, kw_only=True)
class FullTensorReport:
    """A tensor with no spectrum: an embedding, a bias or norm weight, or something else.

    ``frobenius_norm`` is ``‖T_tuned − T_base‖_F`` and ``relative_frobenius`` that over
    ``‖T_base‖_F``, both exact.
    """

    key: str
    base_key: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    frobenius_norm: float
    weight_frobenius_norm: float
    relative_frobenius: float
    changed: bool


@dataclass(frozen=True, kw_only=True)
class FullSummary:
    """Model-wide totals.

    ``only_in_tuned``/``only_in_base`` list keys found on one side; ``mismatched`` holds
    ``"key: reason"`` for tensors of different shapes or non-float dtypes. ``methods`` counts
    the layers by method.
    """

    layer_count: int
    changed_layers: int
    unchanged_layers: tuple[str, ...]
    high_rank_layers: tuple[str, ...]
    mean_stable_rank: float
    max_stable_rank: float
    mean_weight_stable_rank: float
    mean_merged_stable_rank: float
    mean_energy_rank: float
    total_relative_frobenius: float
    params: int
    params_at_rank: int
    max_bound: float
    methods: Mapping[str, int]
    tensors_changed: int
    only_in_tuned: tuple[str, ...]
    only_in_base: tuple[str, ...]
    mismatched: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class FullFinetuneReport(NotebookRepr):
    """Everything ``lora-audit inspect --base BASE TUNED`` reports about a full fine-tune."""

    tool: ToolInfo
    tuned: str
    base: str
    files: tuple[str, ...]
    settings: FullSettings
    layers: tuple[FullLayerReport, ...]
    tensors: tuple[FullTensorReport, ...]
    summary: FullSummary
    warnings: tuple[str, ...] = ()
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "inspect-full"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``report/schema/inspect-full.schema.json``)."""
        return to_dict(self)

    def __repr__(self) -> str:
        s = self.summary
        return short_repr(
            self,
            f"tuned={path_repr(self.tuned)}",
            f"layers={len(self.layers)}",
            f"energy={self.settings.energy:g}",
            f"stable rank mean {s.mean_stable_rank:.2f}",
            f"high rank {len(s.high_rank_layers)}",
        )


@dataclass(frozen=True, kw_only=True)
class ExtractedLayer:
    """One layer of an extracted LoRA: its rank and its exact error.

    ``optimal_error`` is ``‖ΔW − ΔW_k‖_F/‖ΔW‖_F = √(1 − C(k))`` (Eckart–Young, from the
    certified spectrum and the exact energy); ``error`` is ``‖ΔW − s·B·A‖_F/‖ΔW‖_F`` of the
    factors as written, measured on the dense ``ΔW``.
    """

    name: str
    shape: tuple[int, int]
    rank: int
    frobenius_norm: float
    energy_kept: float
    optimal_error: float
    error: float
    method: str
    high_rank: bool
    params: int


@dataclass(frozen=True, kw_only=True)
class CarriedTensor:
    """A tensor that is not a LoRA layer: ``how`` is ``modules_to_save``, ``lora_bias`` or
    ``not-carried`` (then ``reason`` says why)."""

    key: str
    kind: str
    how: str
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class ExtractReport(NotebookRepr):
    """What ``lora-audit extract`` wrote: per layer rank and error, and every other tensor."""

    tool: ToolInfo
    base: str
    tuned: str
    output: str
    output_format: str
    selection: str
    layers: tuple[ExtractedLayer, ...]
    carried: tuple[CarriedTensor, ...]
    unchanged: tuple[str, ...]
    rank: int
    rank_pattern: Mapping[str, int]
    params: int
    max_error: float
    total_error: float
    warnings: tuple[str, ...] = ()
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "extract"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``report/schema/extract.schema.json``)."""
        return to_dict(self)

    def __repr__(self) -> str:
        return short_repr(
            self,
            f"output={path_repr(self.output)}",
            f"layers={len(self.layers)}",
            f"r={self.rank}",
            f"max error {self.max_error:.3g}",
        )
