"""Intruder dimensions against PEFT's own function and a dense numpy reference of the paper.

PEFT's ``_calc_intruder_ids`` (``peft/tuners/lora/intruders.py``) is the oracle where it is
installed; the numpy reference below is written from the paper's definition (Shuttleworth et
al., 2025): the top left singular vectors of ``W + ΔW`` whose largest ``|cos|`` with any left
singular vector of ``W`` is below ``ε``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from against_base_reference import factors, pretrained_like

from lora_audit.linalg.intruders import (
    Intruders,
    check_intruder_options,
    intruder_dimensions,
    left_basis,
)

SHAPES = [(60, 60), (90, 40), (40, 90)]


def numpy_reference(w: np.ndarray, delta: np.ndarray, top: int, eps: float) -> dict[str, object]:
    """The paper's definition with numpy's LAPACK SVDs, independent of the code under test."""
    u, _, _ = np.linalg.svd(w, full_matrices=False)
    um, sm, _ = np.linalg.svd(w + delta, full_matrices=False)
    k = min(top, *w.shape)
    best = np.abs(um[:, :k].T @ u).max(axis=1)
    idx = [i for i in range(k) if best[i] < eps]
    return {
        "indices": tuple(idx),
        "similarities": best,
        "energy": (sm[idx] ** 2).sum() / (sm**2).sum(),
    }


def run(w: np.ndarray, delta: np.ndarray, **options: float) -> Intruders:
    return intruder_dimensions(torch.from_numpy(w), torch.from_numpy(delta), **options)  # type: ignore[arg-type]


def strong_update(out: int, inp: int, seed: int) -> np.ndarray:
    """A rank-8 update comparable to ``W``: some of its directions become intruders."""
    b, a = factors(out, inp, 8, seed=seed)
    return 2.0 * b @ a


@pytest.mark.parametrize(("out", "inp"), SHAPES)
def test_matches_peft_calc_intruder_ids(out: int, inp: int) -> None:
    intruders = pytest.importorskip("peft.tuners.lora.intruders")
    w = pretrained_like(out, inp, seed=out + inp)
    delta = strong_update(out, inp, seed=out)
    for top, eps in [(10, 0.5), (20, 0.7), (3, 0.9)]:
        tw, tm = torch.from_numpy(w), torch.from_numpy(w + delta)
        expected, _, s_m, _ = intruders._calc_intruder_ids(tw, tm, top, eps)
        found = run(w, delta, top=top, epsilon=eps)
        assert list(found.indices) == expected
        carried = float((s_m[expected] ** 2).sum() / (s_m**2).sum())
        assert found.energy == pytest.approx(carried, rel=1e-12, abs=1e-15)
    assert run(w, delta).count > 0, "the strong update must plant some intruders"


@pytest.mark.parametrize(("out", "inp"), SHAPES)
def test_matches_the_dense_numpy_definition(out: int, inp: int) -> None:
    w = pretrained_like(out, inp, seed=3 * out + inp)
    delta = strong_update(out, inp, seed=inp)
    ref = numpy_reference(w, delta, 10, 0.5)
    found = run(w, delta)
    assert found.top == 10 and found.epsilon == 0.5
    assert found.indices == ref["indices"]
    np.testing.assert_allclose(found.similarities, ref["similarities"], atol=1e-10)  # type: ignore[arg-type]
    assert found.energy == pytest.approx(ref["energy"], rel=1e-10, abs=1e-15)
    sm = np.linalg.svd(w + delta, compute_uv=False)
    np.testing.assert_allclose(found.sigma, sm[:10], rtol=1e-12)


@pytest.mark.parametrize(("out", "inp"), SHAPES)
def test_a_planted_intruder_is_found_with_its_energy(out: int, inp: int) -> None:
    """ΔW = σ·u·vᵀ with u spread evenly over 16 of W's weakest directions (|cos| = 1/4)."""
    w = pretrained_like(out, inp, seed=7)
    u_w = np.linalg.svd(w, full_matrices=False)[0]
    p = min(out, inp)
    u = (
        u_w[:, p - 16 :].sum(axis=1) / 4.0
    )  # unit norm, |cos| = 0.25 with 16 of them, 0 with the rest
    rng = np.random.default_rng(0)
    v = rng.standard_normal(inp)
    v /= np.linalg.norm(v)
    sigma = 30.0  # well above σ₁(W) = 9: the top direction of W + ΔW
    delta = sigma * np.outer(u, v)
    found = run(w, delta)
    assert found.indices == (0,)
    assert found.similarities[0] == pytest.approx(0.25, abs=0.05)
    sm = np.linalg.svd(w + delta, compute_uv=False)
    assert found.energy == pytest.approx(sm[0] ** 2 / (sm**2).sum(), rel=1e-12)
    assert found.energy > 0.5
    assert run(w, delta, epsilon=0.2).count == 0, "ε below the cosine: not an intruder"


@pytest.mark.parametrize(("out", "inp"), SHAPES)
def test_a_tiny_update_has_no_intruders(out: int, inp: int) -> None:
    w = pretrained_like(out, inp, seed=11)
    delta = 1e-6 * strong_update(out, inp, seed=5)
    found = run(w, delta)
    assert found.count == 0 and found.energy == 0.0
    assert min(found.similarities) > 0.99  # W's own top directions, barely moved


def test_a_cached_basis_gives_the_same_answer_and_a_wrong_one_is_refused() -> None:
    w = pretrained_like(50, 30, seed=1)
    delta = strong_update(50, 30, seed=2)
    basis = left_basis(torch.from_numpy(w))
    assert tuple(basis.shape) == (50, 30)
    assert run(w, delta) == intruder_dimensions(
        torch.from_numpy(w), torch.from_numpy(delta), basis=basis
    )
    with pytest.raises(ValueError, match="basis"):
        intruder_dimensions(torch.from_numpy(w), torch.from_numpy(delta), basis=basis[:, :10])
    with pytest.raises(ValueError, match="shapes"):
        intruder_dimensions(torch.from_numpy(w), torch.from_numpy(delta.T.copy()))


def test_top_is_clipped_and_options_are_checked() -> None:
    w = pretrained_like(8, 20, seed=3)
    found = run(w, strong_update(8, 20, seed=4), top=50)
    assert found.top == 8 and len(found.similarities) == 8 == len(found.sigma)
    assert check_intruder_options(10, 0.5) is None
    assert check_intruder_options(0, 0.5) is not None
    assert check_intruder_options(10, 0.0) is not None
    assert check_intruder_options(10, 1.5) is not None
    with pytest.raises(ValueError, match="at least 1"):
        run(w, w, top=0)
