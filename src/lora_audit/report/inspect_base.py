"""The base-aware part of ``inspect --base``: per-layer numbers against the base weights."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class IntruderLayerReport:
    """Intruder dimensions of one layer (``inspect --base --intruders``; schema 2.5).

    Shuttleworth et al. (NeurIPS 2025), as PEFT's ``peft/tuners/lora/intruders.py`` computes
    them: the *i*-th left singular vector of ``W + ΔW`` (thin SVD) is an intruder when its best
    ``|cos|`` with every left singular vector of ``W`` is below ``epsilon``, for ``i < top``.
    Exact (dense float64 SVDs of ``W`` and ``W + ΔW``).

    Attributes
    ----------
    top, epsilon
        Vectors examined (``min(--intruder-top, out, in)``) and the threshold.
    count, indices
        How many are intruders, and their 0-based positions by descending ``σ(W + ΔW)``.
    energy
        Their share of ``‖W + ΔW‖_F²``: ``Σᵢ σᵢ(W + ΔW)² / ‖W + ΔW‖_F²`` over the intruders.
    similarities
        Each examined vector's best ``|cos|`` with ``W``'s left singular vectors.
    sigma
        The examined singular values of ``W + ΔW``.
    """

    top: int
    epsilon: float
    count: int
    indices: tuple[int, ...]
    energy: float
    similarities: tuple[float, ...]
    sigma: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class IntruderSummary:
    """Adapter-wide intruder dimensions (``inspect --base --intruders``; schema 2.5).

    Attributes
    ----------
    top, epsilon
        ``--intruder-top`` and ``--intruder-epsilon``.
    layers_pattern
        ``--intruder-layers``, or ``None`` for every matched layer.
    layers_examined, layers_with_intruders, total
        Layers examined, those with at least one intruder, and intruders over all of them.
    max_count, max_layer
        The most intruders in one layer and that layer (``None`` when there are none).
    """

    top: int
    epsilon: float
    layers_pattern: str | None
    layers_examined: int
    layers_with_intruders: int
    total: int
    max_count: int
    max_layer: str | None


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
    intruders
        Intruder dimensions (``--intruders``; schema 2.5), ``None`` when not computed.
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
    intruders: IntruderLayerReport | None = None


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
    intruders
        Intruder dimensions over the layers examined (``--intruders``; schema 2.5), or
        ``None`` when not computed.
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
    intruders: IntruderSummary | None = None
