"""The ``inspect`` report: per-layer spectra and ranks, the adapter summary, retrain advice."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lora_audit.report.common import (
    SCHEMA_VERSION,
    AdapterInfo,
    NotebookRepr,
    ToolInfo,
    path_repr,
    short_repr,
    to_dict,
)
from lora_audit.report.fuse import FuseLayerReport, FuseSummary
from lora_audit.report.inspect_base import BaseLayerReport, BaseSummary


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The options the numbers depend on.

    ``settings_file`` is the settings file read (``lora-audit.toml``, or ``pyproject.toml``
    with ``[tool.lora-audit]``), which ``energy`` and ``coverage`` may come from; ``None``
    when only defaults and flags applied.
    """

    energy: float
    coverage: float
    device: str
    method: str
    settings_file: str | None = None


@dataclass(frozen=True, kw_only=True)
class LayerReport:
    """Spectrum, metrics and advice for one adapted module (``ΔW = scale·B·A``)."""

    name: str
    kind: str
    shape: tuple[int, int]
    weight_shape: tuple[int, ...]
    rank: int
    alpha: float | None
    scale: float
    dtype: str
    dora: bool
    singular_values: tuple[float, ...]
    frobenius_norm: float
    spectral_norm: float
    stable_rank: float
    effective_rank: float
    energy: tuple[float, ...]
    energy_rank: int
    recommended_rank: int
    wasted_rank: int
    params: int
    params_after: int
    untrained: bool
    structure: str = "lora"
    network_dim: int | None = None
    #: Where ``scale`` came from: ``config``, ``metadata``, ``module_alpha``, ``option``,
    #: ``assumed`` (nothing in the file says; a warning names the scale) or ``fixed``.
    scale_source: str = "assumed"
    #: Base-aware metrics (``inspect --base``); ``None`` without a base or for an unmatched layer.
    base: BaseLayerReport | None = None
    #: More than half of the layer's parameters are what ``compress --energy τ`` removes.
    mostly_wasted: bool = False
    #: Fuse survival per scheme (``inspect --base … --fuse-into``); empty without it.
    fuse: tuple[FuseLayerReport, ...] = ()

    @property
    def wasted_params(self) -> int:
        """``params − params_after``: what ``compress --energy τ`` removes (all when untrained)."""
        return self.params - self.params_after


#: What the retraining advice comes to (``summary.advice_verdict``).
AdviceVerdict = Literal["keep", "retrain", "keep-structure", "untrained"]


@dataclass(frozen=True, kw_only=True)
class AdviceBasis:
    """The rule the retraining advice follows and the evidence it rests on.

    ``rule`` and ``version`` name the rule (a new version whenever any of its values change);
    ``tau``, ``quantile``, ``rounding`` and ``rank_pattern`` are its values; ``custom`` is true
    when ``--coverage`` replaced its quantile (then the evidence below is not about it).
    ``tasks``, ``seeds`` and ``tolerance`` describe the retraining study behind the rule
    (``tasks`` is empty while it has not been calibrated), ``docs`` links to that study and
    ``not_validated_on`` lists what it was not validated on.
    """

    rule: str
    version: int
    tau: float
    quantile: float
    rounding: Literal["pow2", "none"]
    rank_pattern: bool
    custom: bool
    tasks: tuple[str, ...]
    seeds: int
    tolerance: str
    docs: str
    not_validated_on: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Adapter-wide totals and the advice derived from them."""

    layer_count: int
    untrained_layers: tuple[str, ...]
    nominal_rank: int
    recommended_rank: int
    lora_alpha: float | None
    rank_pattern: Mapping[str, int]
    alpha_pattern: Mapping[str, float]
    layers_covered: int
    params: int
    params_after: int
    params_retrain: int
    wasted_fraction: float
    mean_stable_rank: float
    max_stable_rank: float
    top_wasters: tuple[str, ...]
    advice: tuple[str, ...]
    #: The adapter has LoHa/LoKr/Tucker layers that plain LoRA at their needed ranks would not
    #: make smaller: the advice is to keep what was trained (``params_retrain = params``).
    keep_structure: bool = False
    #: The ``network_dim`` values the LoHa/LoKr layers were trained at (sorted, distinct).
    network_dims: tuple[int, ...] = ()
    #: Adapter-wide base-aware summary (``inspect --base``); ``None`` without a base.
    base: BaseSummary | None = None
    #: ``params − params_after``: what ``compress --energy τ`` removes.
    wasted_params: int = 0
    #: The ``lora-audit compress`` command for this adapter (its path shell-quoted as given);
    #: ``None`` when compress would remove nothing or refuses this adapter.
    compress_command: str | None = None
    #: How many layers have a scale nothing in the file gave, and those scales (distinct).
    assumed_scale_layers: int = 0
    assumed_scales: tuple[float, ...] = ()
    #: The distinct ranks the layers have now (several with a ``rank_pattern``), ascending.
    layer_ranks: tuple[int, ...] = ()
    #: ``untrained`` (no layer is: nothing to advise), ``keep-structure``, ``keep`` (the advice
    #: equals the ranks trained) or ``retrain``; ``None`` in reports not built by ``inspect``.
    advice_verdict: AdviceVerdict | None = None
    #: Why, for this adapter, in one sentence (the quantile k, stable rank, energy kept, rule).
    advice_reason: str = ""
    #: The rule behind ``recommended_rank`` and what it rests on.
    advice_basis: AdviceBasis | None = None
    #: The smallest fraction of ‖ΔW_ℓ‖_F² a trained layer keeps at its advised rank.
    retrain_energy_kept: float | None = None
    #: ``lora_alpha`` under kohya/LyCORIS's name (``--network_alpha``); ``None`` for others.
    network_alpha: float | None = None
    #: Adapter-wide fuse survival and its advice (``--fuse-into``); ``None`` without it.
    fuse: FuseSummary | None = None


@dataclass(frozen=True, kw_only=True)
class InspectReport(NotebookRepr):
    """Everything ``lora-audit inspect`` reports about one adapter."""

    tool: ToolInfo
    adapter: AdapterInfo
    settings: Settings
    layers: tuple[LayerReport, ...]
    summary: Summary
    warnings: tuple[str, ...] = ()
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "inspect"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``report/schema/inspect.schema.json``)."""
        return to_dict(self)

    def __repr__(self) -> str:
        s = self.summary
        return short_repr(
            self,
            f"adapter={path_repr(self.adapter.path)}",
            f"format={self.adapter.format!r}",
            f"layers={len(self.layers)}",
            f"r={self.adapter.rank}",
            f"energy={self.settings.energy:g}",
            f"stable rank mean {s.mean_stable_rank:.2f}",
            f"wasted {s.wasted_fraction:.1%}",
            f"advised r={s.recommended_rank}",
        )
