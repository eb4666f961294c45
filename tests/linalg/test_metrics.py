"""Spectrum metrics against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lora_audit.linalg.metrics import cumulative_energy, energy_rank, summarize


def test_summary_of_known_spectrum() -> None:
    sigma = np.array([3.0, 2.0, 1.0, 0.0])
    s = summarize(sigma, energy=0.9)
    assert s.frobenius_norm == pytest.approx(math.sqrt(14))
    assert s.spectral_norm == 3.0
    assert s.stable_rank == pytest.approx(14 / 9)
    p = np.array([9, 4, 1]) / 14
    assert s.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert s.energy == pytest.approx((9 / 14, 13 / 14, 1.0, 1.0))
    assert s.energy_rank == 2  # C(1) = 0.64 < 0.9 ≤ C(2) = 0.93


def test_zero_spectrum() -> None:
    s = summarize(np.zeros(4), energy=0.99)
    assert (s.stable_rank, s.effective_rank, s.energy_rank, s.frobenius_norm) == (0, 0, 0, 0)
    assert s.energy == (0.0, 0.0, 0.0, 0.0)


def test_energy_rank_boundary_is_inclusive() -> None:
    sigma = np.sqrt(np.array([0.5, 0.25, 0.25]))
    assert energy_rank(sigma, 0.75) == 2  # C(2) = 0.75 exactly
    assert energy_rank(sigma, 1.0) == 3
    assert energy_rank(sigma, 0.5) == 1


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=64),
       st.floats(0.01, 1.0))  # fmt: skip
def test_energy_rank_is_the_smallest_k_reaching_tau(values: list[float], tau: float) -> None:
    sigma = np.sort(np.array(values))[::-1]
    k = energy_rank(sigma, tau)
    c = cumulative_energy(sigma)
    if sigma[0] == 0:
        assert k == 0
        return
    assert 1 <= k <= sigma.size
    assert c[k - 1] >= tau * (1 - 1e-9)
    if k > 1:
        assert c[k - 2] < tau
    s = summarize(sigma, energy=tau)
    assert 1 - 1e-9 <= s.stable_rank <= np.count_nonzero(sigma) + 1e-9
    assert 1 - 1e-9 <= s.effective_rank <= np.count_nonzero(sigma) + 1e-9
