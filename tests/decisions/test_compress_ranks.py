"""Rank selection rules and clamps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lora_audit.decisions.compress_ranks import ZERO_TOLERANCE, RankRule, select_ranks

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


def lost(spectra: list[np.ndarray], ks: list[int]) -> float:
    """Σ‖ΔW − ΔW_k‖_F²: the squared singular values left out."""
    return sum(float((s[k:] ** 2).sum()) for s, k in zip(spectra, ks, strict=True))


def budget_ranks(spectra: list[np.ndarray], costs: list[int], budget: float) -> list[int]:
    return select_ranks(spectra, costs=costs, rule=RankRule(mode="budget", value=budget))


spectrum = st.lists(st.floats(0, 100), min_size=1, max_size=12).map(
    lambda v: np.sort(np.array(v))[::-1]
)


@given(st.lists(spectrum, min_size=1, max_size=6), st.integers(1, 2000))
def test_budget_is_respected_and_greedy(spectra: list[np.ndarray], budget: int) -> None:
    costs = [7 * (i + 1) for i in range(len(spectra))]
    got = budget_ranks(spectra, costs, budget)
    spent = sum(k * c for k, c in zip(got, costs, strict=True))
    floor = sum(costs)  # one unit each is the minimum
    assert spent <= max(budget, floor)
    assert all(1 <= k <= len(s) for k, s in zip(got, spectra, strict=True))
    # greedy runs until nothing useful fits: no layer could still take a unit that removes error
    left = max(budget, floor) - spent
    for i, (s, k) in enumerate(zip(spectra, got, strict=True)):
        if k < len(s) and costs[i] <= left and s[k] > ZERO_TOLERANCE * s[0]:
            pytest.fail(f"layer {i} could take one more unit of rank")


@given(
    st.lists(st.tuples(spectrum, st.integers(1, 40)), min_size=1, max_size=6),
    st.integers(1, 12),
)
def test_budget_is_never_worse_than_uniform(layers: list[tuple[np.ndarray, int]], k: int) -> None:
    spectra = [s for s, _ in layers]
    costs = [c for _, c in layers]
    uniform = [min(k, len(s)) for s in spectra]
    budget = sum(u * c for u, c in zip(uniform, costs, strict=True))
    got = budget_ranks(spectra, costs, budget)
    assert sum(g * c for g, c in zip(got, costs, strict=True)) <= budget
    # units below ZERO_TOLERANCE·σ₁ are never bought: they may be left out
    noise = sum(len(s) * float(ZERO_TOLERANCE * s[0]) ** 2 for s in spectra)
    assert lost(spectra, got) <= lost(spectra, uniform) * (1 + 1e-12) + noise


def test_budget_beats_plain_greedy_where_a_big_unit_does_not_fit() -> None:
    # plain greedy buys layer 1's two 3.3s (ratio 1.1) before layer 0's 10 (ratio 1.0), then
    # has 7 left and cannot afford the 10: error 10 against 3.3 for uniform rank 2
    spectra = [np.sqrt([20.0, 10.0, 0.0, 0.0]), np.sqrt([10.0, 3.3, 3.3, 0.0])]
    got = budget_ranks(spectra, [10, 3], 26)
    assert lost(spectra, got) <= 3.3 + 1e-9
    assert got == [2, 2]  # uniform rank 2 fits exactly


def test_budget_buys_no_rank_that_removes_no_error() -> None:
    spectra = [np.array([4.0, 2.0, 0.0, 0.0]), np.array([3.0, 1e-9, 0.0])]
    assert budget_ranks(spectra, [10, 10], 10_000) == [2, 1]


def test_budget_with_equal_costs_is_optimal() -> None:
    # with one cost per unit, the best allocation of n units takes the n largest σ² overall
    rng = np.random.default_rng(0)
    spectra = [np.sort(rng.random(8))[::-1] * rng.random() for _ in range(5)]
    for units in range(5, 41):
        got = budget_ranks(spectra, [1] * 5, units)
        best = np.sort(np.concatenate([s[1:] ** 2 for s in spectra]))[::-1][: units - 5]
        kept = sum(float((s[:k] ** 2).sum()) for s, k in zip(spectra, got, strict=True))
        top = sum(float(s[0] ** 2) for s in spectra) + float(best.sum())
        assert kept == pytest.approx(top, rel=1e-12)


@pytest.mark.parametrize("budget", [100, 150, 300])
def test_budget_beats_uniform_on_decaying_spectra(budget: int) -> None:
    spectra = [np.array([8.0, 4, 2, 1, 0.5]), np.array([1.0, 0.9, 0.8, 0.7, 0.6])]
    costs = [10, 10]
    got = select_ranks(spectra, costs=costs, rule=RankRule(mode="budget", value=budget))
    uniform = [min(5, budget // 20)] * 2

    def err(ks: list[int]) -> float:
        return sum(float((s[k:] ** 2).sum()) for s, k in zip(spectra, ks, strict=True))

    assert err(got) <= err(uniform)
