"""Decisions: per-layer recommended ranks, the adapter-wide rank and its ``rank_pattern``.

How the retraining rank is chosen
---------------------------------
The choice is an :class:`~lora_audit.decisions.advice_rule.AdviceRule` (the default is
:data:`~lora_audit.decisions.advice_rule.DEFAULT_ADVICE_RULE`). Each layer ℓ needs ``k_ℓ`` =
its energy rank at the rule's τ (the smallest k keeping a fraction τ of ‖ΔW_ℓ‖_F²). The
adapter-wide advice is one rank ``k`` for most layers plus a PEFT ``rank_pattern`` for the rest:

1. Take the rule's quantile (``--coverage`` overrides it) of the ``k_ℓ`` of the trained layers,
   so that a few outlier layers do not decide the rank of all the others.
2. Round it up to a power of two (rule ``rounding="pow2"``; ``"none"`` keeps it), capped at
   the nominal rank. A retrained adapter does not
   reproduce the same spectrum, so the headroom (up to 2×) is deliberate; powers of two are
   also what practitioners use and what kernels are tuned for.
3. Every layer with ``k_ℓ > k`` gets a ``rank_pattern`` entry (unless the rule has
   ``rank_pattern=False``): ``k_ℓ`` rounded the same way, capped at its own rank; so does a
   layer whose own rank is below ``k`` (it keeps its rank: a layer never grows). Its key
   matches that module only (see :func:`lora_audit.formats.patterns.pattern_key_for`).
4. Every layer keeps its own ``alpha/r`` (or ``alpha/√r`` with rsLoRA) ratio, i.e. the scale
   per unit of rank it was trained with: ``lora_alpha`` carries the most common ratio at the
   global rank, and a layer whose alpha at its advised rank differs from ``lora_alpha`` (it
   has another rank, or the user gave it another alpha through ``alpha_pattern``) gets an
   ``alpha_pattern`` entry.
5. Advice never grows an adapter. Plain LoRA layers cannot (a layer never gets more than its
   own rank), but LoHa, LoKr and LoCon-Tucker layers store far fewer parameters than plain
   LoRA of their inner rank. When the plan above, retrained as plain LoRA, would need at
   least as many parameters as the adapter stores, the advice is to keep what was trained
   (``keep_structure``): the plan's rank is the nominal one, with no patterns.
6. An adapter none of whose layers is trained (ΔW = 0 everywhere: saved before training) gets
   no plan (``untrained``): there is nothing to size a rank from.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from lora_audit.adapter import LoraLayer, Structure
from lora_audit.decisions.advice_rule import DEFAULT_ADVICE_RULE, AdviceRule
from lora_audit.linalg.metrics import cumulative_energy, energy_rank

#: What the advice comes to: keep the ranks trained, retrain smaller (or with a rank_pattern),
#: keep a LyCORIS structure that plain LoRA would not make smaller, or nothing to advise
#: because no layer is trained.
RetrainVerdict = Literal["keep", "retrain", "keep-structure", "untrained"]


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
        The ``coverage`` quantile of the trained layers' energy ranks (at the rule's τ).
    keep_structure
        The adapter has LoHa/LoKr/Tucker layers and plain LoRA at the ranks they need would
        not be smaller: keep what was trained (``params`` is then what it stores).
    lora_params
        Parameters of the plain LoRA plan (what ``keep_structure`` compared against).
    rule
        The rule that made the plan.
    energy_kept
        The smallest fraction of ‖ΔW_ℓ‖_F² a trained layer keeps at its advised rank.
    unchanged
        Every layer is advised the rank it has now: the advice is to keep the configuration.
    untrained
        No layer is trained (ΔW = 0 everywhere): there is no advice.
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
    rule: AdviceRule = field(default=DEFAULT_ADVICE_RULE)
    energy_kept: float = 1.0
    unchanged: bool = False
    untrained: bool = False

    @property
    def verdict(self) -> RetrainVerdict:
        """``untrained``, ``keep-structure``, ``keep`` (nothing changes) or ``retrain``."""
        if self.untrained:
            return "untrained"
        if self.keep_structure:
            return "keep-structure"
        return "keep" if self.unchanged else "retrain"


def retrain_verdict(
    *, keep_structure: bool, rank: int, nominal: int, patterned: bool
) -> RetrainVerdict:
    """The verdict of a plan from its summary figures (prefer :attr:`RankPlan.verdict`)."""
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


def rounded(k: int, rule: AdviceRule) -> int:
    """``k`` as the rule rounds a rank (at least 1)."""
    return next_power_of_two(k) if rule.rounding == "pow2" else max(k, 1)


def plan_retrain(
    layers: Sequence[LoraLayer],
    spectra: Sequence[npt.NDArray[np.float64]],
    *,
    rule: AdviceRule = DEFAULT_ADVICE_RULE,
    pattern_key: Callable[[str], str],
    rslora: bool,
) -> RankPlan:
    """Choose a global rank, a ``rank_pattern`` and alphas for retraining, by ``rule``.

    Parameters
    ----------
    layers
        The adapter's layers.
    spectra
        Each layer's singular values (descending), in the same order.
    rule
        The advice rule (its τ, quantile, rounding and whether it gives a rank_pattern).
    pattern_key
        Callable turning a module name into a pattern key.
    rslora
        Whether the adapter uses rsLoRA (scale ``alpha/√r``).
    """
    ks = [energy_rank(np.asarray(sigma, dtype=np.float64), rule.tau) for sigma in spectra]
    trained = [k for k in ks if k > 0]
    nominal = max((layer.rank for layer in layers), default=0)
    quantile = quantile_rank(trained, rule.quantile)
    base = RankPlan(
        rank=0, lora_alpha=None, rank_pattern={}, alpha_pattern={}, layers_covered=0, params=0,
        quantile=quantile, coverage=rule.quantile, rule=rule,
    )  # fmt: skip
    if not trained:
        return dataclasses.replace(base, untrained=True)
    rank = min(rounded(quantile, rule), max(nominal, 1))
    ranks = [
        _layer_rank(layer, k, rank=rank, rule=rule) for layer, k in zip(layers, ks, strict=True)
    ]
    pairs = list(zip(layers, ranks, strict=True))
    lora_alpha, alphas = _alphas(layers, ranks, rank=rank, rslora=rslora)
    params = sum(r * layer.params_per_rank for layer, r in pairs)
    stored = sum(layer.params for layer in layers)
    structured = any(layer.structure is not Structure.LORA for layer in layers)
    if structured and params >= stored:  # as plain LoRA it would not be smaller: keep it
        keep = [layer.rank for layer in layers]
        return dataclasses.replace(
            base, rank=max(nominal, 1),
            lora_alpha=_alphas(layers, keep, rank=max(nominal, 1), rslora=rslora)[0],
            layers_covered=len(layers), params=stored, keep_structure=True, lora_params=params,
        )  # fmt: skip
    kept = (_kept(sigma, r) for sigma, r, k in zip(spectra, ranks, ks, strict=True) if k > 0)
    return dataclasses.replace(
        base, rank=rank, lora_alpha=lora_alpha,
        rank_pattern={pattern_key(layer.name): r for layer, r in pairs if r != rank},
        alpha_pattern={pattern_key(name): alpha for name, alpha in alphas.items()},
        layers_covered=sum(k <= rank for k in ks), params=params, lora_params=params,
        energy_kept=min(kept, default=1.0), unchanged=all(r == layer.rank for layer, r in pairs),
    )  # fmt: skip


def _layer_rank(layer: LoraLayer, k: int, *, rank: int, rule: AdviceRule) -> int:
    """A layer's advised rank: the global one, more through rank_pattern, never its own more."""
    wanted = rank if k <= rank or not rule.rank_pattern else rounded(k, rule)
    return min(wanted, layer.rank)


def _alphas(
    layers: Sequence[LoraLayer], ranks: Sequence[int], *, rank: int, rslora: bool
) -> tuple[float | None, dict[str, float]]:
    """``lora_alpha`` and ``{layer name: alpha}`` for the layers whose alpha differs from it.

    Each layer keeps its own ratio ``alpha/r`` (``alpha/√r``); ``lora_alpha`` carries the most
    common one. ``(None, {})`` when alphas cannot be advised (LoHa/LoKr, or no alpha known).
    """
    if not all(layer.structure in {Structure.LORA, Structure.TUCKER} for layer in layers):
        return None, {}
    ratios = {
        layer.name: _ratio(layer, rslora=rslora) for layer in layers if layer.alpha is not None
    }
    if not ratios:
        return None, {}
    usual = Counter(round(value, 9) for value in ratios.values()).most_common(1)[0][0]
    lora_alpha = _alpha_for(usual, rank, rslora=rslora)
    out: dict[str, float] = {}
    for layer, r in zip(layers, ranks, strict=True):
        if layer.name in ratios:
            alpha = _alpha_for(ratios[layer.name], r, rslora=rslora)
            if alpha != lora_alpha:
                out[layer.name] = alpha
    return lora_alpha, out


def _kept(sigma: npt.NDArray[np.float64], rank: int) -> float:
    energy = cumulative_energy(np.asarray(sigma, dtype=np.float64))
    return float(energy[min(rank, energy.size) - 1]) if rank > 0 and energy.size else 0.0


def _ratio(layer: LoraLayer, *, rslora: bool) -> float:
    assert layer.alpha is not None
    return layer.alpha / (math.sqrt(layer.rank) if rslora else layer.rank)


def _alpha_for(ratio: float, rank: int, *, rslora: bool) -> float:
    value = ratio * (math.sqrt(rank) if rslora else rank)
    return float(round(value, 6))
