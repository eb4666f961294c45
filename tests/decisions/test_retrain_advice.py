"""The retraining plan: global rank, rank_pattern and alphas."""

from __future__ import annotations

import math

import pytest

from lora_audit.adapter import LayerKind, LoraLayer
from lora_audit.decisions.retrain_advice import next_power_of_two, plan_retrain, quantile_rank
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


def test_helpers() -> None:
    assert [next_power_of_two(k) for k in (0, 1, 2, 3, 5, 8, 9)] == [1, 1, 2, 4, 8, 8, 16]
    assert quantile_rank([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9) == 9
    assert quantile_rank([], 0.9) == 0


def test_outliers_get_rank_pattern_entries_that_match_them() -> None:
    names = [f"model.layers.{i}.q_proj" for i in range(10)]
    ks = [2, 3, 2, 2, 3, 2, 2, 3, 2, 11]
    plan = plan_retrain(
        [layer(n) for n in names], ks, coverage=0.9, pattern_key=pattern_key_for, rslora=False
    )
    assert plan.rank == 4 and plan.layers_covered == 9
    assert plan.lora_alpha == 8  # keeps alpha/r = 2
    assert plan.rank_pattern == {pattern_key_for(names[9]): 16}
    assert plan.alpha_pattern == {pattern_key_for(names[9]): 32}
    for n in names:
        expected = 16 if n == names[9] else None
        assert match_pattern(plan.rank_pattern, n) == expected
    assert plan.params == 9 * 4 * 30 + 16 * 30


def test_rank_never_exceeds_nominal_and_rslora_alpha() -> None:
    layers = [layer(f"l.{i}", rank=12, alpha=24, rslora=True) for i in range(3)]
    plan = plan_retrain(
        layers, [12, 12, 11], coverage=1.0, pattern_key=pattern_key_for, rslora=True
    )
    assert plan.rank == 12 and not plan.rank_pattern
    assert plan.lora_alpha == pytest.approx(24 / math.sqrt(12) * math.sqrt(12))


def test_mixed_ratios_give_no_alpha_advice() -> None:
    layers = [layer("a", alpha=16), layer("b", alpha=32)]
    plan = plan_retrain(layers, [1, 9], coverage=0.5, pattern_key=pattern_key_for, rslora=False)
    assert plan.lora_alpha is None and plan.alpha_pattern == {}
    assert plan.rank == 1 and plan.rank_pattern == {"b": 16}


def test_layers_trained_below_the_global_rank_keep_their_rank() -> None:
    layers = [layer("a", rank=16), layer("b", rank=16), layer("small", rank=4)]
    plan = plan_retrain(layers, [7, 8, 2], coverage=1.0, pattern_key=pattern_key_for, rslora=False)
    assert plan.rank == 8 and plan.rank_pattern == {"small": 4}
    assert plan.params == (8 + 8 + 4) * 30
