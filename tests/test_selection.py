"""Rank selection rules and clamps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lora_audit.selection import RankRule, select_ranks

S = [np.array([10.0, 5.0, 2.0, 1.0, 0.5, 0.0]), np.array([3.0, 2.9, 2.8, 0.1])]


def ranks(mode: str, value: float, **kw: int) -> list[int]:
    return select_ranks(S, costs=[10, 20], rule=RankRule(mode=mode, value=value, **kw))  # type: ignore[arg-type]


def test_fixed_rank_never_grows_a_layer() -> None:
    assert ranks("rank", 5) == [5, 4]
    assert ranks("rank", 2) == [2, 2]


def test_ratio_keeps_exactly_the_values_above_the_cut() -> None:
    assert ranks("ratio", 5) == [3, 3]  # σ ≥ 2 and σ ≥ 0.6: no extra one (sd-scripts' off-by-one)
    assert ranks("ratio", 1) == [1, 1]


def test_energy_and_clamps() -> None:
    assert ranks("energy", 0.8) == [2, 3]
    assert ranks("energy", 0.8, max_rank=2) == [2, 2]
    assert ranks("energy", 0.8, min_rank=3) == [3, 3]


def test_zero_spectrum_keeps_one_unit() -> None:
    assert select_ranks([np.zeros(4)], costs=[5], rule=RankRule(mode="energy", value=0.9)) == [1]


@given(
    st.lists(st.lists(st.floats(0, 100), min_size=1, max_size=12), min_size=1, max_size=6),
    st.integers(1, 2000),
)
def test_budget_is_respected_and_greedy(values: list[list[float]], budget: int) -> None:
    spectra = [np.sort(np.array(v))[::-1] for v in values]
    costs = [7 * (i + 1) for i in range(len(spectra))]
    got = select_ranks(spectra, costs=costs, rule=RankRule(mode="budget", value=budget))
    spent = sum(k * c for k, c in zip(got, costs, strict=True))
    floor = sum(costs)  # one unit each is the minimum
    assert spent <= max(budget, floor)
    assert all(1 <= k <= len(s) for k, s in zip(got, spectra, strict=True))
    # greedy runs until nothing fits: no layer could still take one more unit
    left = max(budget, floor) - spent
    for i, (s, k) in enumerate(zip(spectra, got, strict=True)):
        if k < len(s) and costs[i] <= left:
            pytest.fail(f"layer {i} could take one more unit of rank")


@pytest.mark.parametrize("budget", [100, 150, 300])
def test_budget_beats_uniform_on_decaying_spectra(budget: int) -> None:
    spectra = [np.array([8.0, 4, 2, 1, 0.5]), np.array([1.0, 0.9, 0.8, 0.7, 0.6])]
    costs = [10, 10]
    got = select_ranks(spectra, costs=costs, rule=RankRule(mode="budget", value=budget))
    uniform = [min(5, budget // 20)] * 2

    def err(ks: list[int]) -> float:
        return sum(float((s[k:] ** 2).sum()) for s, k in zip(spectra, ks, strict=True))

    assert err(got) <= err(uniform)
