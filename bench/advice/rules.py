"""Candidate advice rules, evaluated offline on the per-layer energy ranks a run recorded.

A rule is (τ, quantile, rounding): the ``quantile`` of the layers' k@τ (nearest rank, as
``lora_audit.decisions.retrain_advice.quantile_rank``), rounded up to a power of two or not,
capped at the adapter's rank. The study's ranks are the powers of two 1…64, so a rank that is
not rounded is retrained at the next studied rank up (the same rank the rounded rule gives);
the rounding matters only for ``compress`` and for the parameter count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ENERGIES = (0.9, 0.95, 0.99)
QUANTILES = {"median": 0.5, "p75": 0.75, "p90": 0.9}
STUDIED = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One candidate rule."""

    energy: float
    quantile: str
    pow2: bool

    @property
    def name(self) -> str:
        return f"k@{self.energy}-{self.quantile}-{'pow2' if self.pow2 else 'exact'}"


RULES = tuple(
    Rule(energy=e, quantile=q, pow2=p) for e in ENERGIES for q in QUANTILES for p in (True, False)
)


def quantile_rank(ranks: Sequence[int], coverage: float) -> int:
    """The smallest value ≥ a fraction ``coverage`` of ``ranks`` (lora-audit's definition)."""
    ordered = sorted(ranks)
    return ordered[min(max(0, math.ceil(coverage * len(ordered)) - 1), len(ordered) - 1)]


def next_power_of_two(k: int) -> int:
    return 1 if k <= 1 else 1 << (k - 1).bit_length()


def advised(rule: Rule, layers: Mapping[str, Mapping[str, Any]], rank: int) -> int:
    """The global rank ``rule`` advises for an adapter of rank ``rank`` (at least 1)."""
    k = quantile_rank(
        [int(x[f"k@{rule.energy}"]) for x in layers.values()], QUANTILES[rule.quantile]
    )
    k = max(1, k)
    return min(next_power_of_two(k) if rule.pow2 else k, rank)


def retrained_at(k: int) -> int:
    """The studied rank a global rank ``k`` is retrained at (the next one up)."""
    return next(r for r in STUDIED if r >= k)


def advised_ranks(layers: Mapping[str, Mapping[str, Any]], rank: int) -> set[int]:
    """Every rank below ``rank`` some candidate rule advises (where ``compress`` is evaluated)."""
    return {k for rule in RULES if (k := advised(rule, layers, rank)) < rank}


def pattern_key(name: str) -> str:
    """A PEFT ``rank_pattern`` key for module ``name`` only (``bert.`` dropped, dots escaped)."""
    return re.escape(name.removeprefix("bert."))


def advised_pattern(
    rule: Rule, layers: Mapping[str, Mapping[str, Any]], rank: int
) -> tuple[int, dict[str, int]]:
    """The global rank and ``rank_pattern`` ``rule`` advises, as lora-audit's plan makes them:
    every layer whose k@τ exceeds the global rank gets its own k@τ, rounded the same way,
    capped at ``rank``."""
    k = advised(rule, layers, rank)
    pattern: dict[str, int] = {}
    for name, layer in layers.items():
        need = int(layer[f"k@{rule.energy}"])
        if need > k:
            pattern[pattern_key(name)] = min(next_power_of_two(need) if rule.pow2 else need, rank)
    return k, pattern


def pattern_params(
    layers: Mapping[str, Mapping[str, Any]], k: int, pattern: Mapping[str, int]
) -> float:
    """Mean rank over layers of a (global ``k`` + ``pattern``) plan (a parameter proxy: MiniLM's
    layers differ in shape, so the analysis weighs by shape separately)."""
    ranks = [pattern.get(pattern_key(name), k) for name in layers]
    return sum(ranks) / len(ranks)
