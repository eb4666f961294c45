"""The ``compress`` report: per-layer kept rank and error, totals, and where the output went."""

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
from lora_audit.report.serving import Serving


@dataclass(frozen=True, kw_only=True)
class CompressSettings:
    """How ``compress`` chose the ranks."""

    mode: str
    value: float
    min_rank: int
    max_rank: int | None
    device: str
    method: str
    #: ``--fit TARGET`` as the target's canonical text (``"vllm:max-lora-rank=16"``), or
    #: ``None``: the rule above is then the user's alone.
    fit: str | None = None


@dataclass(frozen=True, kw_only=True)
class LayerCompression:
    """One layer before and after ``compress``.

    Attributes
    ----------
    action
        ``"truncated"`` (rewritten at ``new_rank``) or ``"kept"`` (tensors unchanged: the rule
        keeps its full rank, or a structured layer would not get smaller as plain LoRA).
    energy_kept
        ``C(new_rank)``: the fraction of ‖ΔW‖_F² the new layer keeps.
    relative_error
        ``‖ΔW − ΔW_k‖_F / ‖ΔW‖_F = √(1 − C(k))``.
    """

    name: str
    kind: str
    structure: str
    shape: tuple[int, int]
    rank: int
    new_rank: int
    action: str
    energy_kept: float
    relative_error: float
    frobenius_norm: float
    params: int
    params_after: int


@dataclass(frozen=True, kw_only=True)
class CompressSummary:
    """Totals over all layers.

    ``relative_error`` is the adapter-wide ``√(Σ‖ΔW_ℓ − ΔW_ℓ,k‖_F² / Σ‖ΔW_ℓ‖_F²)`` and
    ``energy_kept`` the adapter-wide ``Σ‖ΔW_ℓ,k‖_F² / Σ‖ΔW_ℓ‖_F² = 1 − relative_error²``.
    """

    layer_count: int
    truncated: int
    params: int
    params_after: int
    min_energy_kept: float
    max_relative_error: float
    relative_error: float
    file_bytes: int
    file_bytes_after: int | None
    #: ``1 − params_after / params`` (0 for an empty adapter).
    saved_fraction: float = 0.0
    #: Layers whose scale nothing in the input gave (the output bakes that guess in).
    assumed_scale_layers: int = 0
    #: The fraction of the whole adapter's ‖ΔW‖F² the output keeps (1 for an empty adapter).
    energy_kept: float = 1.0


@dataclass(frozen=True, kw_only=True)
class CompressReport(NotebookRepr):
    """Everything ``lora-audit compress`` reports (also for ``--dry-run``)."""

    tool: ToolInfo
    adapter: AdapterInfo
    settings: CompressSettings
    output: str | None
    output_format: str
    dry_run: bool
    layers: tuple[LayerCompression, ...]
    summary: CompressSummary
    warnings: tuple[str, ...] = ()
    #: How the written PEFT adapter reads in PEFT, vLLM and llama.cpp (``None``: not PEFT).
    serving: Serving | None = None
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "compress"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``report/schema/compress.schema.json``)."""
        return to_dict(self)

    def __repr__(self) -> str:
        s = self.summary
        return short_repr(
            self,
            f"adapter={path_repr(self.adapter.path)}",
            f"{self.settings.mode}={self.settings.value:g}",
            f"dry_run={self.dry_run}",
            f"layers={s.layer_count}",
            f"truncated={s.truncated}",
            f"params {s.params:,} → {s.params_after:,} (saved {s.saved_fraction:.1%})",
            f"relative error {s.relative_error:.3g}",
        )
