"""The finished report: frozen dataclasses with a schema version, and their JSON form.

Renderers receive these objects complete and never compute. ``to_dict`` gives the JSON
contract documented in the README and in ``report/schema/inspect.schema.json``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Bumped on any incompatible change to the JSON form (major) or on additions (minor).
SCHEMA_VERSION = "1.1"


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
    #: How many layers took their scale from each source (``{"config": 37}``); see
    #: :attr:`LayerReport.scale_source`. ``assumed`` means nothing in the file gave it.
    scale_sources: Mapping[str, int] = field(default_factory=dict)


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
    #: Where ``scale`` came from: ``config``, ``metadata``, ``module_alpha``, ``option``,
    #: ``assumed`` (nothing in the file says; a warning names the scale) or ``fixed``.
    scale_source: str = "assumed"
    #: Base-aware metrics (``inspect --base``); ``None`` without a base or for an unmatched layer.
    base: BaseLayerReport | None = None

    @property
    def wasted_params(self) -> int:
        """``params − params_after``: what ``compress --energy τ`` removes (all when untrained)."""
        return self.params - self.params_after


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
    """

    energy: float
    window: int
    min_rise: float
    fail_on_drift: bool
    device: str
    method: str
    step_source: str
    step_unit: str


@dataclass(frozen=True, kw_only=True)
class TrendReport:
    """Everything ``lora-audit trend`` reports about a series of checkpoints."""

    tool: ToolInfo
    settings: TrendSettings
    checkpoints: tuple[CheckpointSummary, ...]
    layers: tuple[LayerTrend, ...]
    findings: tuple[Finding, ...]
    status: str
    exit_code: int
    warnings: tuple[str, ...] = ()
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "trend"


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


@dataclass(frozen=True, kw_only=True)
class CompareReport:
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


@dataclass(frozen=True, kw_only=True)
class BaseLayerReport:
    """How one layer's update sits against its pretrained weight ``W`` (``inspect --base``).

    ``ΔW`` is ``s·B·A``, or for DoRA the effective update ``W′ − W`` with
    ``W′ = m ⊙ (W + s·B·A) / ‖W + s·B·A‖_row``; ``W + ΔW`` is the merged weight. Stable ranks
    are ``‖·‖_F² / ‖·‖₂²``. ``U_k, V_k`` are ``W``'s top-k singular vectors and ``U_Δ, V_Δ``
    ``ΔW``'s. ``iterative`` names the fields computed iteratively (to ``BaseSummary.tolerance``);
    all others are exact up to rounding. ``nan`` (JSON ``null``) marks an undefined value.

    Attributes
    ----------
    key, file, transposed
        The base tensor, its file, and whether it is stored ``(in, out)`` (``Conv1D``,
        embeddings).
    update
        ``"lora"`` or ``"dora"``.
    k
        Dimension of the subspaces compared (0 for an untrained layer).
    weight_frobenius_norm, weight_spectral_norm, weight_stable_rank
        ``‖W‖_F``, ``σ₁(W)``, ``sr(W)``.
    merged_frobenius_norm, merged_spectral_norm, merged_stable_rank
        The same for ``W + ΔW``.
    stable_rank_change
        ``sr(W + ΔW) − sr(W)``.
    update_frobenius_norm, update_spectral_norm
        ``‖ΔW‖_F``, ``σ₁(ΔW)``.
    relative_frobenius, relative_spectral
        ``‖ΔW‖_F / ‖W‖_F`` and ``σ₁(ΔW) / σ₁(W)``.
    top_k_alignment
        ``‖U_kᵀ ΔW V_k‖_F / ‖ΔW‖_F``: the part of the update inside ``W``'s top-k directions.
    amplification
        ``‖ΔW‖_F / ‖U_Δᵀ W V_Δ‖_F`` (Hu et al., 2022): how much the update amplifies
        directions that ``W`` does not emphasise.
    left_angles, right_angles
        Principal angles in degrees, ascending, between ``span(U_k)`` and ``span(U_Δ)``
        (``V_k`` and ``V_Δ``).
    subspace_overlap
        Mean of the ``2k`` squared cosines of those angles: 1 for the same subspaces, about
        ``k/out`` and ``k/in`` for unrelated ones.
    update_energy_at_rank
        DoRA only: the fraction of ``‖ΔW‖_F²`` in its best rank-r approximation.
    residual
        Largest relative residual ``‖Mv − σ̃u‖ / σ̃₁`` of the iterative triplets.
    subspace_error
        Estimated sine of the largest angle between the computed and exact top-k subspaces.
    converged
        Whether every iterative triplet met the tolerance.
    iterative
        The fields above that come from iterative triplets.
    random_alignment, random_overlap
        Reference values: ``k/√(out·in)`` and ``(k/out + k/in)/2``, what ``top_k_alignment``
        (root mean square) and ``subspace_overlap`` (mean) would be for an update whose
        singular directions were random. Values near them mean the update ignores ``W``'s
        top directions; values near 1 mean it reinforces them.
    """

    key: str
    file: str
    transposed: bool
    update: str
    k: int
    weight_frobenius_norm: float
    weight_spectral_norm: float
    weight_stable_rank: float
    merged_frobenius_norm: float
    merged_spectral_norm: float
    merged_stable_rank: float
    stable_rank_change: float
    update_frobenius_norm: float
    update_spectral_norm: float
    relative_frobenius: float
    relative_spectral: float
    top_k_alignment: float
    amplification: float
    left_angles: tuple[float, ...]
    right_angles: tuple[float, ...]
    subspace_overlap: float
    update_energy_at_rank: float | None
    residual: float
    subspace_error: float
    converged: bool
    iterative: tuple[str, ...]
    random_alignment: float
    random_overlap: float


@dataclass(frozen=True, kw_only=True)
class BaseStat:
    """One base-aware metric over the audited layers (undefined values left out)."""

    mean: float
    median: float
    min: float
    max: float
    min_layer: str
    max_layer: str


@dataclass(frozen=True, kw_only=True)
class BaseSummary:
    """Adapter-wide base-aware results (``inspect --base``).

    Attributes
    ----------
    path, index, files
        The base as given, its shard index (or ``None``) and the files weights were read from.
    layers_matched, unmatched_layers
        Layers audited against the base, and those without a matching weight
        (``--base-partial``).
    k
        ``--base-k``, or ``None`` when each layer's energy rank was used.
    tolerance
        Relative residual tolerance of the iterative triplets.
    exact, iterative
        Which :class:`BaseLayerReport` fields are exact and which iterative.
    stats
        Per metric (``weight_stable_rank``, ``merged_stable_rank``, ``stable_rank_change``,
        ``relative_frobenius``, ``relative_spectral``, ``top_k_alignment``,
        ``subspace_overlap``, ``amplification``, ``random_alignment``, ``random_overlap``, and
        for DoRA ``update_energy_at_rank``):
        mean, median, min, max, and the layers with the min and the max.
    total_relative_frobenius
        ``√(Σ‖ΔW‖_F² / Σ‖W‖_F²)`` over the audited layers.
    max_residual, max_subspace_error, converged
        The worst accuracy figures over all layers.
    """

    path: str
    index: str | None
    files: tuple[str, ...]
    layers_matched: int
    unmatched_layers: tuple[str, ...]
    k: int | None
    tolerance: float
    exact: tuple[str, ...]
    iterative: tuple[str, ...]
    stats: Mapping[str, BaseStat]
    total_relative_frobenius: float
    max_residual: float
    max_subspace_error: float
    converged: bool
