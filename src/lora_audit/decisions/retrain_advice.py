"""Decisions: per-layer recommended ranks, the adapter-wide rank and its ``rank_pattern``.

How the retraining rank is chosen
---------------------------------
Each layer ℓ needs ``k_ℓ`` = its energy rank at τ (the smallest k keeping a fraction τ of
‖ΔW_ℓ‖_F²). The adapter-wide advice is one rank ``k`` for most layers plus a PEFT
``rank_pattern`` for the rest:

1. Take the ``coverage`` quantile (default 0.9) of the ``k_ℓ`` of the trained layers, so that
   a few outlier layers do not decide the rank of all the others.
2. Round it up to a power of two, capped at the nominal rank. A retrained adapter does not
   reproduce the same spectrum, so the headroom (up to 2×) is deliberate; powers of two are
   also what practitioners use and what kernels are tuned for.
3. Every layer with ``k_ℓ > k`` gets a ``rank_pattern`` entry: ``k_ℓ`` rounded up to a power
   of two, capped at its own rank; so does a layer whose own rank is below ``k`` (it keeps
   its rank: a layer never grows). Its key matches that module only (see
   :func:`lora_audit.formats.patterns.pattern_key_for`).
4. ``lora_alpha`` is scaled so that every layer keeps its current ``alpha/r`` (or
   ``alpha/√r`` with rsLoRA) ratio, and pattern layers get an ``alpha_pattern`` entry.
5. Advice never grows an adapter. Plain LoRA layers cannot (a layer never gets more than its
   own rank), but LoHa, LoKr and LoCon-Tucker layers store far fewer parameters than plain
   LoRA of their inner rank. When the plan above, retrained as plain LoRA, would need at
   least as many parameters as the adapter stores, the advice is to keep what was trained
   (``keep_structure``): the plan's rank is the nominal one, with no patterns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from lora_audit.adapter import LoraLayer, Structure


@dataclass(frozen=True, kw_only=True)
class RankPlan:
    """The retraining advice for a whole adapter.

    Attributes
    ----------
    rank, lora_alpha, rank_pattern, alpha_pattern
        The advised global rank and alpha, and the per-module exceptions (PEFT's names).
    layers_covered
        Layers whose energy rank the global rank covers.
    params
        Parameters of the advised adapter; never more than the adapter stores now.
    quantile, coverage
        The ``coverage`` quantile of the trained layers' energy ranks.
    keep_structure
        The adapter has LoHa/LoKr/Tucker layers and plain LoRA at the ranks they need would
        not be smaller: keep what was trained (``params`` is then what it stores).
    lora_params
        Parameters of the plain LoRA plan (what ``keep_structure`` compared against).
    """

    rank: int
    lora_alpha: float | None
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    layers_covered: int
    params: int
    quantile: int = 0
    coverage: float = 0.9
    keep_structure: bool = False
    lora_params: int = 0


#: What the advice comes to: keep the rank trained, retrain smaller (or with a rank_pattern),
#: or keep a LyCORIS structure that plain LoRA would not make smaller.
RetrainVerdict = Literal["keep", "retrain", "keep-structure"]


def retrain_verdict(
    *, keep_structure: bool, rank: int, nominal: int, patterned: bool
) -> RetrainVerdict:
    """The verdict of a plan: ``rank`` advised against the ``nominal`` rank trained at."""
    if keep_structure:
        return "keep-structure"
    return "retrain" if rank < nominal or patterned else "keep"


def next_power_of_two(k: int) -> int:
    """The smallest power of two ≥ ``k`` (1 for k ≤ 1)."""
    return 1 if k <= 1 else 1 << (k - 1).bit_length()


def quantile_rank(ranks: Sequence[int], coverage: float) -> int:
    """The smallest value ≥ a fraction ``coverage`` of ``ranks`` (0 for no ranks)."""
    if not ranks:
        return 0
    ordered = sorted(ranks)
    index = max(0, math.ceil(coverage * len(ordered)) - 1)
    return ordered[min(index, len(ordered) - 1)]


def plan_retrain(
    layers: Sequence[LoraLayer],
    energy_ranks: Sequence[int],
    *,
    coverage: float,
    pattern_key: Callable[[str], str],
    rslora: bool,
) -> RankPlan:
    """Choose a global rank, a ``rank_pattern`` and alphas for retraining.

    Parameters
    ----------
    layers
        The adapter's layers.
    energy_ranks
        ``k_ℓ`` for each layer, in the same order.
    coverage
        Fraction of trained layers the global rank must cover, in (0, 1].
    pattern_key
        Callable turning a module name into a pattern key.
    rslora
        Whether the adapter uses rsLoRA (scale ``alpha/√r``).
    """
    trained = [k for k in energy_ranks if k > 0]
    nominal = max((layer.rank for layer in layers), default=0)
    quantile = quantile_rank(trained, coverage)
    rank = min(next_power_of_two(quantile), max(nominal, 1))
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    ratios = {_ratio(layer, rslora=rslora) for layer in layers if layer.alpha is not None}
    plain = all(layer.structure in {Structure.LORA, Structure.TUCKER} for layer in layers)
    ratio = ratios.pop() if len(ratios) == 1 and plain else None
    params = 0
    covered = 0
    for layer, k in zip(layers, energy_ranks, strict=True):
        layer_rank = min(rank if k <= rank else next_power_of_two(k), layer.rank)
        if k <= rank:
            covered += 1
        if layer_rank != rank:  # needs more, or was trained below the global rank: keep that
            key = pattern_key(layer.name)
            rank_pattern[key] = layer_rank
            if ratio is not None:
                alpha_pattern[key] = _alpha_for(ratio, layer_rank, rslora=rslora)
        params += layer_rank * layer.params_per_rank
    lora_alpha = _alpha_for(ratio, rank, rslora=rslora) if ratio is not None else None
    stored = sum(layer.params for layer in layers)
    structured = any(layer.structure is not Structure.LORA for layer in layers)
    if structured and params >= stored:  # as plain LoRA it would not be smaller: keep it
        return RankPlan(
            rank=max(nominal, 1),
            lora_alpha=(
                _alpha_for(ratio, max(nominal, 1), rslora=rslora) if ratio is not None else None
            ),
            rank_pattern={},
            alpha_pattern={},
            layers_covered=len(layers),
            params=stored,
            quantile=quantile,
            coverage=coverage,
            keep_structure=True,
            lora_params=params,
        )
    return RankPlan(
        rank=rank,
        lora_alpha=lora_alpha,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        layers_covered=covered,
        params=params,
        quantile=quantile,
        coverage=coverage,
        lora_params=params,
    )


def _ratio(layer: LoraLayer, *, rslora: bool) -> float:
    assert layer.alpha is not None
    return layer.alpha / (math.sqrt(layer.rank) if rslora else layer.rank)


def _alpha_for(ratio: float, rank: int, *, rslora: bool) -> float:
    value = ratio * (math.sqrt(rank) if rslora else rank)
    return float(round(value, 6))
