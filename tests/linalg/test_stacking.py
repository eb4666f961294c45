"""stack_factors: Σ cᵢ·Bᵢ·Aᵢ as one thin product, against the dense float64 sum."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_audit.linalg.spectral import qr_singular_values
from lora_audit.linalg.stacking import stack_factors
from lora_audit.linalg.truncation import split_scale


@st.composite
def weighted_layers(draw: st.DrawFn) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[float]]:
    out, inp = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    ranks = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
    coefficients = draw(
        st.lists(
            st.floats(-50, 50, allow_nan=False).filter(lambda c: c == 0 or abs(c) > 1e-6),
            min_size=len(ranks),
            max_size=len(ranks),
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pairs = [(rng.standard_normal((out, r)), rng.standard_normal((r, inp))) for r in ranks]
    return pairs, coefficients


@settings(max_examples=60, deadline=None)
@given(weighted_layers())
def test_the_stacked_product_is_the_weighted_sum(
    case: tuple[list[tuple[np.ndarray, np.ndarray]], list[float]],
) -> None:
    pairs, coefficients = case
    b, a = stack_factors(pairs, coefficients=coefficients)
    dense = sum(c * (b_i @ a_i) for (b_i, a_i), c in zip(pairs, coefficients, strict=True))
    assert b.shape[1] == a.shape[0] == sum(p[0].shape[1] for p in pairs)
    scale = max(1.0, float(np.abs(dense).max()))
    np.testing.assert_allclose(b @ a, dense, atol=1e-12 * scale * b.shape[1])
    # and so is its spectrum, from the factors alone
    sigma = qr_singular_values(b, a)
    ref = np.linalg.svd(dense, compute_uv=False)
    k = min(ref.size, sigma.size)
    np.testing.assert_allclose(sigma[:k], ref[:k], atol=1e-9 * max(1.0, float(ref[0])))


@pytest.mark.parametrize("scale", [4.0, -4.0, 0.0, 1e-300, -2.5])
def test_split_scale_is_balanced_and_keeps_the_sign(scale: float) -> None:
    to_b, to_a = split_scale(scale)
    assert to_b * to_a == pytest.approx(scale, rel=1e-15, abs=0)
    assert abs(to_b) == to_a == math.sqrt(abs(scale))
    assert to_a >= 0


def test_mismatched_factors_are_refused() -> None:
    good = (np.ones((3, 2)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="do not make"):
        stack_factors([good, (np.ones((3, 2)), np.ones((2, 5)))], coefficients=[1.0, 1.0])
    with pytest.raises(ValueError, match="coefficients"):
        stack_factors([good], coefficients=[1.0, 2.0])
