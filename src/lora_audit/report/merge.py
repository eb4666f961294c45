"""The finished report of ``lora-audit merge`` (JSON contract: ``schema/merge.schema.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lora_audit.report.common import SCHEMA_VERSION, NotebookRepr, ToolInfo, path_repr, short_repr
from lora_audit.report.serving import Serving


@dataclass(frozen=True, kw_only=True)
class MergeInput:
    """One adapter merged, and the weight ``w`` its ``ΔW`` is multiplied by.

    Attributes
    ----------
    scale_sources
        How many of its layers took their scale from each source (as in ``inspect``).
    """

    path: str
    tensor_file: str
    format: str
    weight: float
    layer_count: int
    file_bytes: int
    scale_sources: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class MergeSettings:
    """How the merged ranks were chosen: a ``compress`` rank rule, or ``concat``.

    ``value`` is ``None`` for ``concat`` (every layer keeps ``Σ rᵢ``).
    """

    mode: str
    value: float | None
    min_rank: int
    max_rank: int | None
    device: str
    method: str


@dataclass(frozen=True, kw_only=True)
class LayerMerge:
    """One layer of the result, ``Σᵢ wᵢ·ΔWᵢ`` over the inputs that have it.

    Attributes
    ----------
    inputs
        Indices (0-based, in command-line order) of the inputs that have this layer.
    rank
        ``Σ rᵢ``: the inner dimension of the stacked factors, an upper bound on the rank of
        the exact sum.
    new_rank
        The rank written.
    energy_kept
        ``C(new_rank)`` of the exact sum's spectrum.
    relative_error
        ``‖ΔW − ΔW_k‖_F / ‖ΔW‖_F = √(1 − C(k))`` against the exact weighted sum (optimal for
        rank k by Eckart–Young).
    frobenius_norm
        ``‖Σᵢ wᵢ·ΔWᵢ‖_F``.
    params, params_after
        Parameters of the inputs' layers together, and of the written layer.
    """

    name: str
    kind: str
    shape: tuple[int, int]
    inputs: tuple[int, ...]
    rank: int
    new_rank: int
    energy_kept: float
    relative_error: float
    frobenius_norm: float
    params: int
    params_after: int


@dataclass(frozen=True, kw_only=True)
class MergeSummary:
    """Totals: ``relative_error`` is ``√(Σ‖ΔW_ℓ − ΔW_ℓ,k‖_F² / Σ‖ΔW_ℓ‖_F²)`` over all layers;
    ``partial_layers`` counts layers present in only some of the inputs."""

    layer_count: int
    partial_layers: int
    params: int
    params_after: int
    min_energy_kept: float
    max_relative_error: float
    relative_error: float
    file_bytes: int
    file_bytes_after: int | None
    #: Input layers whose scale nothing in their file gave (summed over the inputs).
    assumed_scale_layers: int = 0
    #: ``1 − params_after / params`` (0 for no parameters).
    saved_fraction: float = 0.0


@dataclass(frozen=True, kw_only=True)
class MergeReport(NotebookRepr):
    """Everything ``lora-audit merge`` reports (also for ``--dry-run``)."""

    tool: ToolInfo
    inputs: tuple[MergeInput, ...]
    settings: MergeSettings
    output: str | None
    output_format: str
    dry_run: bool
    layers: tuple[LayerMerge, ...]
    summary: MergeSummary
    dropped_extras: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: How the written PEFT adapter reads in PEFT, vLLM and llama.cpp (``None``: not PEFT).
    serving: Serving | None = None
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "merge"

    def __repr__(self) -> str:
        s = self.summary
        return short_repr(
            self,
            f"inputs={len(self.inputs)}",
            f"output={path_repr(self.output) if self.output else None}",
            f"dry_run={self.dry_run}",
            f"layers={s.layer_count}",
            f"params {s.params:,} → {s.params_after:,} (saved {s.saved_fraction:.1%})",
            f"relative error {s.relative_error:.3g}",
        )
