"""Decisions for ``compress``: the rank each layer keeps.

Four rules, then the same clamps for all of them:

``rank``
    ``k = min(K, r)``.
``energy``
    The energy rank at τ: the smallest k with ``C(k) ≥ τ``
    (:func:`lora_audit.metrics.energy_rank`).
``ratio``
    The number of singular values with ``σᵢ ≥ σ₁ / R`` — exactly those, unlike sd-scripts'
    ``sv_ratio``, which keeps one more.
``budget``
    A total parameter budget ``P`` shared across layers greedily: starting from ``min_rank``
    everywhere, the next unit of rank goes to the layer whose next singular value gives the
    largest ``σ²_{ℓ,k+1} / (in_ℓ + out_ℓ)`` — squared Frobenius error removed per parameter —
    while it fits in what is left of ``P``. Each layer's σ² are non-increasing, so units are
    taken in an order the layers allow, and the allocation is optimal for the fractional
    relaxation of this knapsack; it is exactly optimal as long as no unit had to be skipped
    for lack of room (then only the last, partly-fitting units can differ).

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

from lora_audit.metrics import energy_rank

Mode = Literal["rank", "energy", "ratio", "budget"]


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
    ranks = [_clamp(low, r=len(s), low=low, high=high) for s in spectra]
    caps = [_clamp(len(s), r=len(s), low=low, high=high) for s in spectra]
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
