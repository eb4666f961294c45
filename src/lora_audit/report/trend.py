"""The ``trend`` report: per-checkpoint summaries, per-layer series and drift findings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lora_audit.findings import Finding
from lora_audit.report.common import (
    SCHEMA_VERSION,
    NotebookRepr,
    ToolInfo,
    short_repr,
    to_dict,
)

TrendStatus = Literal["pass", "drift"]


@dataclass(frozen=True, kw_only=True)
class CheckpointSummary:
    """One checkpoint of a training run, as ``trend`` saw it.

    Attributes
    ----------
    step
        Its position in training: a step, an epoch or a number from its name or metadata
        (``TrendSettings.step_source`` says which), or its place in the given order.
    mean_stable_rank, max_stable_rank
        Over the trained layers (as in ``inspect``'s summary).
    mean_energy_rank
        Mean energy rank at τ over the trained layers.
    frobenius_norm
        The adapter's ``√Σ‖ΔW_ℓ‖_F²`` over all layers.
    """

    path: str
    tensor_file: str
    format: str
    step: int
    layer_count: int
    rank: int
    mean_stable_rank: float
    max_stable_rank: float
    mean_energy_rank: float
    frobenius_norm: float
    wasted_fraction: float
    untrained_layers: int


@dataclass(frozen=True, kw_only=True)
class LayerTrend:
    """One layer's metrics across the checkpoints, in step order.

    Each series has one entry per checkpoint (``None`` where the layer is missing).
    ``drift`` names the metrics flagged as rising (``"stable_rank"``, ``"energy_rank"``).
    """

    name: str
    shape: tuple[int, int]
    rank: int
    stable_rank: tuple[float | None, ...]
    energy_rank: tuple[int | None, ...]
    frobenius_norm: tuple[float | None, ...]
    drift: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TrendSettings:
    """The options the trend depends on.

    Attributes
    ----------
    window
        A metric drifts when it never falls over the last ``window`` checkpoints …
    min_rise
        … and rises there by more than this fraction of its value at the window's start.
    step_source
        Where the steps came from: ``"name"``, ``"ss_steps"``, ``"ss_epoch"`` or ``"order"``.
    step_unit
        ``"step"``, ``"epoch"``, ``"number"`` (a bare number in the names) or ``"order"``.
    settings_file
        The settings file read, which ``energy`` may come from; ``None`` when only defaults
        and flags applied.
    """

    energy: float
    window: int
    min_rise: float
    fail_on_drift: bool
    device: str
    method: str
    step_source: str
    step_unit: str
    settings_file: str | None = None


@dataclass(frozen=True, kw_only=True)
class TrendReport(NotebookRepr):
    """Everything ``lora-audit trend`` reports about a series of checkpoints."""

    tool: ToolInfo
    settings: TrendSettings
    checkpoints: tuple[CheckpointSummary, ...]
    layers: tuple[LayerTrend, ...]
    findings: tuple[Finding, ...]
    status: TrendStatus
    warnings: tuple[str, ...] = ()
    #: How many layers have a drifting series (``LayerTrend.drift`` not empty).
    drifting_layers: int = 0
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "trend"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``report/schema/trend.schema.json``)."""
        return to_dict(self)

    def __repr__(self) -> str:
        return short_repr(
            self,
            f"status={self.status!r}",
            f"checkpoints={len(self.checkpoints)}",
            f"layers={len(self.layers)}",
            f"drifting layers={self.drifting_layers}",
            f"findings={len(self.findings)}",
        )
