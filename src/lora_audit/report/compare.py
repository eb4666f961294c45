"""The ``compare`` report: per-layer subspace overlap and norms of two adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lora_audit.report.common import (
    SCHEMA_VERSION,
    AdapterInfo,
    NotebookRepr,
    ToolInfo,
    path_repr,
    short_repr,
    to_dict,
)


@dataclass(frozen=True, kw_only=True)
class LayerComparison:
    """One layer present in both adapters, ``ΔW_A`` against ``ΔW_B``.

    Attributes
    ----------
    name, name_b
        The layer's name in A, and in B when it differs (matched after normalising).
    relative_difference
        ``‖ΔW_A − ΔW_B‖_F / ‖ΔW_A‖_F``; ``None`` when ``ΔW_A = 0``.
    cosine
        ``⟨ΔW_A, ΔW_B⟩_F / (‖ΔW_A‖_F·‖ΔW_B‖_F)``; ``None`` when either is zero.
    k
        Dimension of the compared singular subspaces.
    left_angles, right_angles
        Principal angles in degrees, ascending, between the top-k left (output side of
        ``B·A``) and right (input side) singular subspaces.
    left_overlap, right_overlap
        ``mean cos²θ`` of those angles, in [0, 1]; ``None`` when ``k = 0``.
    """

    name: str
    name_b: str | None
    shape: tuple[int, int]
    rank_a: int
    rank_b: int
    norm_a: float
    norm_b: float
    difference_norm: float
    difference_spectral_norm: float
    relative_difference: float | None
    cosine: float | None
    k: int
    left_angles: tuple[float, ...]
    right_angles: tuple[float, ...]
    left_overlap: float | None
    right_overlap: float | None


@dataclass(frozen=True, kw_only=True)
class ShapeMismatch:
    """A layer both adapters adapt, with different shapes (not compared)."""

    name: str
    name_b: str | None
    shape_a: tuple[int, int]
    shape_b: tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class CompareSummary:
    """Totals over the matched layers.

    ``relative_difference`` is ``√(Σ‖ΔW_A − ΔW_B‖_F²) / √(Σ‖ΔW_A‖_F²)`` and ``cosine`` is
    ``Σ⟨ΔW_A, ΔW_B⟩_F / (√Σ‖ΔW_A‖_F² · √Σ‖ΔW_B‖_F²)``; the overlaps are means over the
    layers that have one; ``most_different`` names the layers with the largest relative
    difference.
    """

    matched: int
    only_in_a: tuple[str, ...]
    only_in_b: tuple[str, ...]
    relative_difference: float | None
    cosine: float | None
    mean_left_overlap: float | None
    mean_right_overlap: float | None
    most_different: tuple[str, ...]
    #: How many matched layers were compared (those of the same shape in both).
    compared: int = 0


@dataclass(frozen=True, kw_only=True)
class CompareReport(NotebookRepr):
    """Everything ``lora-audit compare`` reports about two adapters."""

    tool: ToolInfo
    adapter_a: AdapterInfo
    adapter_b: AdapterInfo
    top_k: int
    layers: tuple[LayerComparison, ...]
    mismatched: tuple[ShapeMismatch, ...]
    summary: CompareSummary
    warnings: tuple[str, ...] = ()
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "compare"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``report/schema/compare.schema.json``)."""
        return to_dict(self)

    def __repr__(self) -> str:
        s = self.summary
        return short_repr(
            self,
            f"a={path_repr(self.adapter_a.path)}",
            f"b={path_repr(self.adapter_b.path)}",
            f"matched={s.matched}",
            f"relative difference {_number(s.relative_difference)}",
            f"cosine {_number(s.cosine)}",
        )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
