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
