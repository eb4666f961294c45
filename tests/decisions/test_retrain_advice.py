"""The retraining plan: global rank, rank_pattern and alphas."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pytest

from lora_audit.adapter import LayerKind, LoraLayer
from lora_audit.decisions.advice_rule import DEFAULT_ADVICE_RULE, AdviceRule
from lora_audit.decisions.retrain_advice import (
    RankPlan,
    next_power_of_two,
    plan_retrain,
    quantile_rank,
)
from lora_audit.formats.patterns import match_pattern, pattern_key_for


def layer(name: str, *, rank: int = 16, alpha: float = 32, rslora: bool = False) -> LoraLayer:
    scale = alpha / (math.sqrt(rank) if rslora else rank)
    return LoraLayer(
        name=name,
        kind=LayerKind.LINEAR,
        a_key="a",
        b_key="b",
        a_shape=(rank, 10),
        b_shape=(20, rank),
        out_features=20,
        in_features=10,
        rank=rank,
        alpha=alpha,
        scale=scale,
        dtype="F32",
        weight_shape=(20, 10),
    )


def flat(k: int, rank: int) -> np.ndarray:
    """A spectrum of ``rank`` values whose energy rank is ``k`` at every τ < 1: k equal σ."""
    return np.array([1.0] * k + [0.0] * (rank - k))


def resolved(pattern: dict[str, int] | dict[str, float], layers: Sequence[LoraLayer]) -> dict:
    """``{layer name: value}`` for the layers a PEFT pattern mapping matches."""
    found = {lay.name: match_pattern(pattern, lay.name) for lay in layers}
    return {name: value for name, value in found.items() if value is not None}


#: The mechanism's tests use the v1 values (τ = 0.99), at which a flat spectrum of k values has
#: energy rank k whatever k ≤ 64; the default rule's own values are tested by the commands.
RULE = dataclasses.replace(DEFAULT_ADVICE_RULE, tau=0.99)


def plan(
    layers: Sequence[LoraLayer],
    ks: Sequence[int],
    *,
    coverage: float = 0.9,
    rslora: bool = False,
    rule: AdviceRule = RULE,
) -> RankPlan:
    spectra = [flat(k, lay.rank) for lay, k in zip(layers, ks, strict=True)]
    return plan_retrain(
        layers,
        spectra,
        rule=rule.with_quantile(coverage),
        pattern_key=pattern_key_for,
        rslora=rslora,
    )


def test_helpers() -> None:
    assert [next_power_of_two(k) for k in (0, 1, 2, 3, 5, 8, 9)] == [1, 1, 2, 4, 8, 8, 16]
    assert quantile_rank([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9) == 9
    assert quantile_rank([], 0.9) == 0


def test_outliers_get_rank_pattern_entries_that_match_them() -> None:
    names = [f"model.layers.{i}.q_proj" for i in range(10)]
    ks = [2, 3, 2, 2, 3, 2, 2, 3, 2, 11]
    p = plan([layer(n) for n in names], ks)
    assert p.verdict == "retrain"
    assert p.rank == 4 and p.layers_covered == 9
    assert p.lora_alpha == 8  # keeps alpha/r = 2
    assert p.rank_pattern == {pattern_key_for(names[9]): 16}
    assert p.alpha_pattern == {pattern_key_for(names[9]): 32}
    for n in names:
        expected = 16 if n == names[9] else None
        assert match_pattern(p.rank_pattern, n) == expected
    assert p.params == 9 * 4 * 30 + 16 * 30


def test_rank_never_exceeds_nominal_and_rslora_alpha() -> None:
    layers = [layer(f"l.{i}", rank=12, alpha=24, rslora=True) for i in range(3)]
    p = plan(layers, [12, 12, 11], coverage=1.0, rslora=True)
    assert p.rank == 12 and not p.rank_pattern
    assert p.lora_alpha == pytest.approx(24 / math.sqrt(12) * math.sqrt(12))
    assert p.verdict == "keep"


def test_mixed_ratios_keep_each_layers_ratio() -> None:
    # "b" was trained with another alpha (a user's alpha_pattern): it keeps alpha/r = 2 while
    # the others keep 1, so the advice carries an alpha_pattern for it
    layers = [layer("a", alpha=16), layer("c", alpha=16), layer("b", alpha=32)]
    p = plan(layers, [1, 1, 9], coverage=0.5)
    assert p.rank == 1 and p.rank_pattern == {"b": 16}
    assert p.lora_alpha == 1  # alpha/r = 1, the most common ratio, at r = 1
    assert p.alpha_pattern == {"b": 32}


def test_layers_trained_below_the_global_rank_keep_their_rank() -> None:
    layers = [layer("a", rank=16), layer("b", rank=16), layer("small", rank=4)]
    p = plan(layers, [7, 8, 2], coverage=1.0)
    assert p.rank == 8 and p.rank_pattern == {"small": 4}
    assert p.alpha_pattern == {"small": 32}  # it keeps its own scale, 32/4 = 8
    assert p.params == (8 + 8 + 4) * 30


def test_an_untrained_adapter_gets_no_plan() -> None:
    # every B = 0 (saved before training): no "retrain at r=1", nothing to keep
    layers = [layer(f"l.{i}", rank=8) for i in range(4)]
    p = plan(layers, [0, 0, 0, 0])
    assert p.verdict == "untrained" and p.untrained
    assert p.rank == 0 and p.params == 0 and p.lora_alpha is None
    assert p.rank_pattern == {} and p.alpha_pattern == {}


def test_advice_equal_to_the_trained_rank_pattern_is_keep() -> None:
    # r=8 with rank_pattern {query: 4, down: 32}; each layer needs what it has
    layers = [layer(f"l.{i}.dense", rank=8) for i in range(8)]
    layers += [layer("l.0.query", rank=4, alpha=8), layer("l.0.down", rank=32, alpha=64)]
    p = plan(layers, [8] * 8 + [4, 30])
    assert p.rank == 8 and resolved(p.rank_pattern, layers) == {"l.0.query": 4, "l.0.down": 32}
    assert p.unchanged and p.verdict == "keep"
    assert p.params == sum(lay.params for lay in layers)


def test_the_rule_values_drive_the_plan() -> None:
    layers = [layer(f"l.{i}", rank=16) for i in range(10)]
    ks = [3, 3, 3, 3, 3, 5, 5, 5, 5, 12]
    assert plan(layers, ks).rank == 8  # p90 = 5 → 8
    none = dataclasses.replace(RULE, rounding="none")
    assert plan(layers, ks, rule=none).rank == 5
    assert resolved(plan(layers, ks, rule=none).rank_pattern, layers) == {"l.9": 12}
    assert plan(layers, ks, coverage=0.5).rank == 4  # the median, 3 → 4
    flat_rule = dataclasses.replace(RULE, rank_pattern=False)
    p = plan(layers, ks, rule=flat_rule)
    assert p.rank == 8 and p.rank_pattern == {} and p.layers_covered == 9


def test_the_rule_tau_sizes_the_ranks() -> None:
    # σ² = 8, 4, 2, 1, 0.5 …: k@0.9 = 3, k@0.99 = 6 of 8
    sigma = np.sqrt(np.array([2.0**-i for i in range(8)]) * 8)
    layers = [layer(f"l.{i}", rank=8) for i in range(3)]
    at = {
        tau: plan_retrain(
            layers,
            [sigma] * 3,
            rule=dataclasses.replace(RULE, tau=tau, rounding="none"),
            pattern_key=pattern_key_for,
            rslora=False,
        )
        for tau in (0.9, 0.99)
    }
    assert at[0.9].rank == 4 and at[0.99].rank == 7
    energy = np.cumsum(sigma**2) / np.sum(sigma**2)
    assert at[0.9].energy_kept == pytest.approx(energy[3])
    assert at[0.99].energy_kept == pytest.approx(energy[6])
    assert at[0.9].rule.tau == 0.9


def test_coverage_other_than_the_rules_quantile_marks_it_custom() -> None:
    assert DEFAULT_ADVICE_RULE.with_quantile(DEFAULT_ADVICE_RULE.quantile) is DEFAULT_ADVICE_RULE
    custom = DEFAULT_ADVICE_RULE.with_quantile(0.5)
    assert custom.custom and custom.quantile == 0.5 and custom.id == DEFAULT_ADVICE_RULE.id
    assert custom.label.endswith("custom median")


def test_rsLoRA_alpha_pattern_keeps_each_layers_scale() -> None:
    # rsLoRA, r=8, lora_alpha=16, alpha_pattern {value: 32}: scale alpha/√r per layer is kept
    layers = [layer(f"l.{i}.query", rank=8, alpha=16, rslora=True) for i in range(3)]
    layers += [layer(f"l.{i}.value", rank=8, alpha=32, rslora=True) for i in range(2)]
    p = plan(layers, [2, 2, 2, 2, 2], rslora=True)
    assert p.rank == 2
    assert p.lora_alpha == pytest.approx(16 / math.sqrt(8) * math.sqrt(2))
    assert resolved(p.alpha_pattern, layers) == {
        f"l.{i}.value": pytest.approx(32 / math.sqrt(8) * math.sqrt(2)) for i in range(2)
    }
    alphas = resolved(p.alpha_pattern, layers)
    for lay in layers:  # the scale each layer had is the scale it is advised
        alpha = alphas.get(lay.name, p.lora_alpha)
        assert alpha is not None
        assert alpha / math.sqrt(2) == pytest.approx(lay.scale)
