"""Base-aware metrics against dense float64 references (LAPACK SVDs, scipy's subspace angles).

Exact quantities must agree to rounding (1e-10 relative); iterative ones within the tolerance
the report states: σ₁ to ``tol`` relative, the subspace-derived numbers to a few times the
reported ``subspace_error``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from against_base_reference import (
    EXACT,
    check,
    dense_reference,
    dense_svd,
    factors,
    pretrained_like,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_audit.linalg.against_base import base_metrics
from lora_audit.linalg.krylov import KrylovOptions, top_triplets
from lora_audit.linalg.operators import Operator, row_terms


@pytest.mark.parametrize(("out", "inp", "r", "k"), [(300, 200, 8, 5), (150, 400, 6, 3)])
def test_lora_layer_matches_dense_references(out: int, inp: int, r: int, k: int) -> None:
    w = pretrained_like(out, inp, seed=out)
    b, a = factors(out, inp, r, seed=inp)
    scale = 0.75
    [m] = base_metrics(
        torch.tensor(w)[None], torch.tensor(b)[None], torch.tensor(a)[None], scales=[scale], ks=[k]
    )
    assert m.converged and m.k == k and not m.dora
    assert m.residual <= 1e-8
    check(m, dense_reference(w, scale * b @ a, k), tol=1e-8)
    assert m.random_alignment == pytest.approx(k / math.sqrt(out * inp))
    assert m.random_overlap == pytest.approx((k / out + k / inp) / 2)


def test_krylov_is_iterative_here_not_a_dense_solve() -> None:
    """The basis stays well below min(out, in): the check above exercised the Krylov path."""
    w = torch.tensor(pretrained_like(300, 200, seed=3))[None]
    t = top_triplets(Operator(w=w), k=5)
    assert t.u.shape == (1, 300, 5) and bool(t.converged.all())
    assert t.steps * 15 < 200, t.steps
    s = dense_svd(w[0].numpy())[1]
    assert np.allclose(t.sigma[0].numpy(), s[:5], rtol=1e-12)
    assert float(t.subspace_error[0]) < 1e-6


def test_dora_effective_update_matches_dense_references() -> None:
    out, inp, r, k = 200, 120, 4, 3
    w = pretrained_like(out, inp, seed=5)
    b, a = factors(out, inp, r, seed=6)
    scale = 2.0
    rng = np.random.default_rng(7)
    merged_dir = w + scale * b @ a
    norms = np.linalg.norm(merged_dir, axis=1)  # PEFT: one norm per output row of (out, in)
    magnitude = norms * (1 + 0.2 * rng.standard_normal(out))
    effective = (magnitude / norms)[:, None] * merged_dir  # W′
    delta = effective - w
    [m] = base_metrics(
        torch.tensor(w)[None],
        torch.tensor(b)[None],
        torch.tensor(a)[None],
        scales=[scale],
        ks=[k],
        magnitude=torch.tensor(magnitude)[None],
    )
    assert m.dora and m.converged
    assert "update_spectral_norm" in m.iterative and "amplification" in m.iterative
    ref = dense_reference(w, delta, k)
    check(m, ref, tol=1e-8)
    assert m.merged_frobenius_norm == pytest.approx(np.linalg.norm(magnitude), rel=EXACT)
    energy = np.asarray(ref["energy"])
    assert m.update_energy_at_rank == pytest.approx(energy[:r].sum(), rel=1e-8)


def test_untrained_layer_has_no_alignment_numbers() -> None:
    w = pretrained_like(40, 30, seed=1)
    b, a = np.zeros((40, 4)), np.ones((4, 30))
    [m] = base_metrics(
        torch.tensor(w)[None], torch.tensor(b)[None], torch.tensor(a)[None], scales=[1.0], ks=[0]
    )
    assert m.k == 0 and m.update_frobenius_norm == 0 and m.relative_frobenius == 0
    assert m.stable_rank_change == pytest.approx(0, abs=1e-9)
    assert math.isnan(m.top_k_alignment) and m.left_angles == ()


def test_batch_of_layers_with_different_k() -> None:
    n, out, inp, r = 3, 60, 50, 5
    ws = [pretrained_like(out, inp, seed=s) for s in range(n)]
    fs = [factors(out, inp, r, seed=s) for s in range(n)]
    ks, scales = [1, 4, 2], [1.0, 0.5, 3.0]
    results = base_metrics(
        torch.tensor(np.stack(ws)),
        torch.tensor(np.stack([f[0] for f in fs])),
        torch.tensor(np.stack([f[1] for f in fs])),
        scales=scales,
        ks=ks,
    )
    for m, w, (b, a), k, s in zip(results, ws, fs, ks, scales, strict=True):
        assert m.k == k
        check(m, dense_reference(w, s * b @ a, k), tol=1e-8)


def test_row_terms_are_exact() -> None:
    rng = np.random.default_rng(0)
    w, b, a = (
        rng.standard_normal((2, 7, 9)),
        rng.standard_normal((2, 7, 3)),
        rng.standard_normal((2, 3, 9)),
    )
    w2, cross, z2 = (t.numpy() for t in row_terms(*(torch.tensor(x) for x in (w, b, a))))
    ba = b @ a
    assert np.allclose(w2, (w * w).sum(-1), rtol=1e-13)
    assert np.allclose(cross, (w * ba).sum(-1), rtol=1e-12)
    assert np.allclose(z2, (ba * ba).sum(-1), rtol=1e-12)


def test_unconverged_runs_are_flagged() -> None:
    w = torch.tensor(pretrained_like(300, 200, seed=9))[None]
    t = top_triplets(Operator(w=w), k=5, options=KrylovOptions(max_steps=1, oversample=1))
    assert not bool(t.converged.all())


@settings(max_examples=25, deadline=None)
@given(
    out=st.integers(2, 24),
    inp=st.integers(2, 24),
    r=st.integers(1, 6),
    k=st.integers(1, 4),
    log_scale=st.floats(-3, 3),
    seed=st.integers(0, 2**16),
)
def test_random_small_layers(
    out: int, inp: int, r: int, k: int, log_scale: float, seed: int
) -> None:
    """Small matrices: the Krylov basis covers the range, so everything is exact."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, inp))
    b, a = rng.standard_normal((out, r)), rng.standard_normal((r, inp))
    scale = 10.0**log_scale
    delta = scale * b @ a
    rank = int(np.linalg.matrix_rank(delta))
    k = min(k, rank)
    [m] = base_metrics(
        torch.tensor(w)[None], torch.tensor(b)[None], torch.tensor(a)[None], scales=[scale], ks=[k]
    )
    ref = dense_reference(w, delta, k)
    for name in ("weight_frobenius_norm", "merged_frobenius_norm", "update_frobenius_norm"):
        assert getattr(m, name) == pytest.approx(ref[name], rel=1e-9)
    for name in ("weight_spectral_norm", "merged_spectral_norm", "update_spectral_norm"):
        assert getattr(m, name) == pytest.approx(ref[name], rel=1e-8)
    assert m.converged


def test_dora_truncation_keeps_row_scales_and_is_eckart_young() -> None:
    from lora_audit.linalg.dora import dora_truncated

    out, inp, r, k = 30, 20, 5, 2
    w = pretrained_like(out, inp, seed=11)
    b, a = factors(out, inp, r, seed=12)
    scale = 1.5
    direction = w + scale * b @ a
    m = np.linalg.norm(direction, axis=1) * (1 + 0.3 * np.random.default_rng(13).random(out))
    m[4] = 0.0  # a dead row stays dead
    [(b_k, a_k, m_k)] = dora_truncated(
        torch.tensor(w)[None],
        torch.tensor(b)[None],
        torch.tensor(a)[None],
        scales=[scale],
        magnitude=torch.tensor(m)[None],
        ranks=[k],
    )
    new_direction = w + b_k.numpy() @ a_k.numpy()
    effective_new = (m_k.numpy() / np.linalg.norm(new_direction, axis=1))[:, None] * new_direction
    c = m / np.linalg.norm(direction, axis=1)
    x = c[:, None] * scale * b @ a
    u, s, vt = np.linalg.svd(x)
    best = c[:, None] * w + (u[:, :k] * s[:k]) @ vt[:k]
    assert np.allclose(effective_new, best, rtol=0, atol=1e-12 * np.abs(best).max())
    assert m_k[4] == 0 and np.all(b_k.numpy()[4] == 0)
    effective_old = c[:, None] * direction
    error = np.linalg.norm(effective_new - effective_old)
    assert error == pytest.approx(np.sqrt((s[k:] ** 2).sum()), rel=1e-10)
