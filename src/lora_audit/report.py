"""The finished report: frozen dataclasses with a schema version, and their JSON form.

Renderers receive these objects complete and never compute. ``to_dict`` gives the JSON
contract documented in the README and in ``schema/inspect.schema.json``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Bumped on any incompatible change to the JSON form (major) or on additions (minor).
SCHEMA_VERSION = "1.0"


@dataclass(frozen=True, kw_only=True)
class ToolInfo:
    """The program that made the report."""

    name: str
    version: str


@dataclass(frozen=True, kw_only=True)
class AdapterInfo:
    """What was read: where from, in which format, and its configuration."""

    path: str
    tensor_file: str
    format: str
    base_model: str | None
    layer_count: int
    dtypes: tuple[str, ...]
    rank: int | None
    lora_alpha: float | None
    use_rslora: bool
    use_dora: bool
    modules_to_save: tuple[str, ...]
    passthrough_tensors: int
    file_bytes: int
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The options the numbers depend on."""

    energy: float
    coverage: float
    device: str
    method: str


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


@dataclass(frozen=True, kw_only=True)
class InspectReport:
    """Everything ``lora-audit inspect`` reports about one adapter."""

    tool: ToolInfo
    adapter: AdapterInfo
    settings: Settings
    layers: tuple[LayerReport, ...]
    summary: Summary
    warnings: tuple[str, ...] = ()
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "inspect"


def to_dict(report: Any) -> dict[str, Any]:
    """The JSON-ready form of any report dataclass (tuples → lists, non-finite → None)."""
    return _plain(dataclasses.asdict(report))  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One broken policy rule (``lora-audit check``).

    Attributes
    ----------
    adapter
        The adapter's path as given (``AdapterInfo.path``).
    layer
        The layer concerned, or ``None`` for a finding about the whole adapter.
    rule
        The rule's name (``"max-waste"``).
    measured, limit
        The measured value and the policy's limit it breaks.
    message
        What is wrong, without the adapter and layer names (renderers add them).
    fix
        What to do about it.
    severity
        ``"error"`` (fails the gate).
    """

    adapter: str
    layer: str | None
    rule: str
    measured: float | int
    limit: float | int
    message: str
    fix: str
    severity: str = "error"


@dataclass(frozen=True, kw_only=True)
class AdapterError:
    """An adapter ``check`` could not read or found invalid (exit 3)."""

    path: str
    message: str


@dataclass(frozen=True, kw_only=True)
class CheckReport:
    """Everything ``lora-audit check`` reports: the inspect reports plus the findings.

    Attributes
    ----------
    policy
        The policy applied, by field name (``{"energy": 0.99, "max_waste": 0.5, …}``).
    policy_file
        The policy file read, or ``None`` when only defaults and flags applied.
    rules
        Names of the rules that were evaluated (those the policy turns on).
    adapters
        The inspect report of every adapter that could be read, in the order given.
    errors
        The adapters that could not be read, in the order given.
    findings
        Every finding, by adapter (in the order given), then rule, then layer.
    status
        ``"pass"``, ``"fail"`` (findings) or ``"error"`` (an adapter could not be read).
    exit_code
        The process exit code: the worst of 0 (pass), 1 (findings) and 3 (errors).
    """

    tool: ToolInfo
    policy: Mapping[str, float | int]
    policy_file: str | None
    rules: tuple[str, ...]
    adapters: tuple[InspectReport, ...]
    errors: tuple[AdapterError, ...]
    findings: tuple[Finding, ...]
    status: str
    exit_code: int
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "check"

    def findings_for(self, adapter: str) -> tuple[Finding, ...]:
        """The findings about one adapter (by its path), in report order."""
        return tuple(f for f in self.findings if f.adapter == adapter)


@dataclass(frozen=True, kw_only=True)
class CompressSettings:
    """How ``compress`` chose the ranks."""

    mode: str
    value: float
    min_rank: int
    max_rank: int | None
    device: str
    method: str


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

    ``relative_error`` is the adapter-wide ``√(Σ‖ΔW_ℓ − ΔW_ℓ,k‖_F² / Σ‖ΔW_ℓ‖_F²)``.
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


@dataclass(frozen=True, kw_only=True)
class CompressReport:
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
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "compress"
