"""Decisions for ``compress``: the rank each layer keeps.

Four rules, then the same clamps for all of them:

``rank``
    ``k = min(K, r)``.
``energy``
    The energy rank at τ: the smallest k with ``C(k) ≥ τ``
    (:func:`lora_audit.linalg.metrics.energy_rank`).
``ratio``
    The number of singular values with ``σᵢ ≥ σ₁ / R`` — exactly those, unlike sd-scripts'
    ``sv_ratio``, which keeps one more.
``budget``
    A total parameter budget ``P`` shared across layers. Starting from ``min_rank``
    everywhere, the next unit of rank goes to the layer whose next singular value gives the
    largest ``σ²_{ℓ,k+1} / (in_ℓ + out_ℓ)`` — squared Frobenius error removed per parameter —
    while it fits in what is left of ``P``; a unit that no longer fits is skipped and cheaper
    ones still may. A unit whose ``σ`` is zero (at most ``ZERO_TOLERANCE·σ₁`` of its layer,
    the accuracy of the spectra) removes no error and is never bought, so ``P`` is an upper
    bound, not a target.

    What this guarantees: each layer's σ² are non-increasing, so until the first unit that
    does not fit, the greedy has taken the top of the list of all units sorted by
    ``σ²/(in + out)``, and no allocation of at most that many parameters removes more error
    (the exchange argument of the fractional knapsack, whose optimum this prefix is). When
    every layer costs the same ``in + out``, the result is optimal for ``P``. With unequal
    costs, a large unit that does not fit at the end can leave the greedy behind a plain
    uniform truncation of the same size (layers costing 10 and 3 with σ² = (20, 10) and
    (10, 3.3, 3.3), ``P = 26``: the greedy buys both 3.3s and then has no room for the 10).
    So the same greedy fill is also run from the largest uniform rank that fits in ``P``, and
    the allocation with the smaller total error is kept: ``budget`` is never worse than
    truncating every layer to one rank at the same parameter count.

Every rule is then clamped to ``[min_rank, max_rank]`` and to the layer's own rank ``r``
(a layer never grows). ``min_rank`` is at least 1: a layer is never dropped (PEFT would then
report missing keys); untrained layers are reported by ``inspect``.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from lora_audit.errors import InputError, UsageError
from lora_audit.linalg.metrics import energy_rank

Mode = Literal["rank", "energy", "ratio", "budget"]

#: ``budget`` treats a singular value at most this fraction of its layer's σ₁ as zero: the
#: spectra are accurate to about this level
#: (``lora_audit.linalg.spectral.GRAM_RELATIVE_TOLERANCE``),
#: and such a unit would remove at most 1e-14 of the layer's energy.
ZERO_TOLERANCE = 1e-7


@dataclass(frozen=True, kw_only=True)
class RankRule:
    """How ranks are chosen.

    Attributes
    ----------
    mode
        ``rank``, ``energy``, ``ratio`` or ``budget``.
    value
        K, τ, R or P for the four modes.
    min_rank, max_rank
        Clamps applied after the rule (``max_rank=None``: no upper clamp but ``r``).
    """

    mode: Mode
    value: float
    min_rank: int = 1
    max_rank: int | None = None


def select_ranks(
    spectra: Sequence[npt.NDArray[np.float64]],
    *,
    costs: Sequence[int],
    rule: RankRule,
) -> list[int]:
    """The rank each layer keeps.

    Parameters
    ----------
    spectra
        Per layer, the singular values of ``ΔW`` (descending, float64), length ``r``.
    costs
        Per layer, the parameters one unit of rank costs, ``in + out``.
    rule
        The rule and its clamps.

    Returns
    -------
    list of int
        ``k_ℓ`` with ``max(1, min_rank) ≤ k_ℓ ≤ min(r_ℓ, max_rank)``.
    """
    low = max(1, rule.min_rank)
    if rule.mode == "budget":
        return _budget(spectra, costs=costs, budget=rule.value, low=low, high=rule.max_rank)
    return [_clamp(_one(s, rule), r=len(s), low=low, high=rule.max_rank) for s in spectra]


def check_budget(rule: RankRule, *, ranks: Sequence[int], costs: Sequence[int]) -> None:
    """Refuse a ``budget`` below what the ``min_rank`` floor already spends.

    The greedy fill never overspends; only the floor can.

    Raises
    ------
    UsageError
        Saying the smallest budget that works.
    """
    spent = sum(k * c for k, c in zip(ranks, costs, strict=True))
    if rule.mode == "budget" and spent > rule.value:
        raise UsageError(
            f"--budget {rule.value:,.0f} is below the {spent:,} parameters that every layer "
            f"needs at --min-rank {rule.min_rank}",
            hint=f"give a budget of at least {spent:,}, or use --rank/--energy",
        )


@dataclass(frozen=True, kw_only=True)
class Truncation:
    """What ``compress`` does to one layer at rank ``k``.

    Attributes
    ----------
    new_rank
        The rank written (the layer's own rank when it is kept).
    truncated
        Whether the layer is rewritten as plain LoRA at ``new_rank``.
    params_after
        Its parameters afterwards: ``new_rank·(in + out)`` when truncated, else what it stores.
    """

    new_rank: int
    truncated: bool
    params_after: int


def truncation(
    *, rank: int, params: int, out_features: int, in_features: int, k: int
) -> Truncation:
    """How ``compress`` treats a layer that stores ``params`` parameters when it keeps ``k``.

    The layer is rewritten as plain LoRA at ``k' = min(k, out, in)`` only when that is below
    its rank **and** stores fewer parameters than it does now (``k'·(in + out) < params``):
    a LoHa, LoKr or Tucker layer that would not get smaller is kept as it is. This is the one
    definition that ``compress`` applies and that ``inspect``'s ``params_after``, its wasted
    fraction and ``check``'s waste rules report.
    """
    k = max(1, min(k, out_features, in_features))
    after = k * (out_features + in_features)
    if k < rank and after < params:
        return Truncation(new_rank=k, truncated=True, params_after=after)
    return Truncation(new_rank=rank, truncated=False, params_after=params)


def _one(sigma: npt.NDArray[np.float64], rule: RankRule) -> int:
    if rule.mode == "rank":
        return int(rule.value)
    if rule.mode == "energy":
        return energy_rank(sigma, rule.value)
    if rule.mode == "ratio":
        top = float(sigma[0]) if sigma.size else 0.0
        return int(np.count_nonzero(sigma >= top / rule.value)) if top > 0 else 0
    raise ValueError(f"unknown rank rule {rule.mode!r}")


def _clamp(k: int, *, r: int, low: int, high: int | None) -> int:
    k = max(k, low)
    if high is not None:
        k = min(k, high)
    return max(1, min(k, r))


def _budget(
    spectra: Sequence[npt.NDArray[np.float64]],
    *,
    costs: Sequence[int],
    budget: float,
    low: int,
    high: int | None,
) -> list[int]:
    floor = [_clamp(low, r=len(s), low=low, high=high) for s in spectra]
    caps = [_clamp(len(s), r=len(s), low=low, high=high) for s in spectra]
    # units past the last non-zero singular value remove no error: never buy them
    useful = [max(k, min(cap, _nonzero(s))) for s, k, cap in zip(spectra, floor, caps, strict=True)]
    greedy = _fill(spectra, floor, caps=useful, costs=costs, budget=budget)
    uniform = _best_uniform(spectra, floor, caps=useful, costs=costs, budget=budget)
    if uniform is None:
        return greedy
    from_uniform = _fill(spectra, uniform, caps=useful, costs=costs, budget=budget)
    return from_uniform if _lost(spectra, from_uniform) < _lost(spectra, greedy) else greedy


def _nonzero(sigma: npt.NDArray[np.float64]) -> int:
    """How many singular values exceed ``ZERO_TOLERANCE·σ₁`` (0 for a zero spectrum)."""
    top = float(sigma[0]) if sigma.size else 0.0
    return int(np.count_nonzero(sigma > ZERO_TOLERANCE * top)) if top > 0 else 0


def _lost(spectra: Sequence[npt.NDArray[np.float64]], ranks: Sequence[int]) -> float:
    """``Σ_ℓ ‖ΔW_ℓ − ΔW_ℓ,k‖_F²``: the squared singular values left out."""
    return sum(float(np.square(s[k:]).sum()) for s, k in zip(spectra, ranks, strict=True))


def _fill(
    spectra: Sequence[npt.NDArray[np.float64]],
    start: Sequence[int],
    *,
    caps: Sequence[int],
    costs: Sequence[int],
    budget: float,
) -> list[int]:
    """Greedy by ``σ²_{k+1}/cost`` from ``start`` while units fit in ``budget``."""
    ranks = list(start)
    left = budget - sum(k * c for k, c in zip(ranks, costs, strict=True))
    heap: list[tuple[float, int]] = []
    for i, (sigma, k) in enumerate(zip(spectra, ranks, strict=True)):
        if k < caps[i]:
            heapq.heappush(heap, (-(float(sigma[k]) ** 2) / costs[i], i))
    while heap:
        _, i = heapq.heappop(heap)
        if costs[i] > left:
            continue  # this layer no longer fits; a cheaper one still may
        ranks[i] += 1
        left -= costs[i]
        if ranks[i] < caps[i]:
            heapq.heappush(heap, (-(float(spectra[i][ranks[i]]) ** 2) / costs[i], i))
    return ranks


def _best_uniform(
    spectra: Sequence[npt.NDArray[np.float64]],
    floor: Sequence[int],
    *,
    caps: Sequence[int],
    costs: Sequence[int],
    budget: float,
) -> list[int] | None:
    """The largest one-rank-for-all allocation (within the clamps) that fits in ``budget``."""
    best: list[int] | None = None
    for k in range(1, max(caps, default=0) + 1):
        ranks = [min(max(k, lo), cap) for lo, cap in zip(floor, caps, strict=True)]
        if sum(r * c for r, c in zip(ranks, costs, strict=True)) > budget:
            break  # the cost only grows with k
        best = ranks
    return best


def refuse_untrained(path: str, spectra: Sequence[npt.NDArray[np.float64]]) -> None:
    """Refuse an adapter none of whose layers is trained (every σ = 0, i.e. every B = 0).

    Truncating it would write an adapter of zeros that looks like a result; there is nothing
    to keep, so nothing is written.

    Raises
    ------
    InputError
        When there is at least one layer and every spectrum is zero.
    """
    if spectra and all(float(np.max(s, initial=0.0)) == 0.0 for s in spectra):
        raise InputError(
            f"{path}: untrained adapter: all {len(spectra)} layers have ΔW = 0 (every B is "
            "zero, as an adapter saved before training is), so there is nothing to keep and "
            "no compressed adapter is written",
            hint="train it first; `lora-audit inspect` shows each layer's spectrum",
        )
