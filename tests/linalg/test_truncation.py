"""The rank-k refactorisation against a dense float64 SVD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lora_audit.linalg.truncation import relative_error, truncated_factors


def dense_best(delta: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def batch(n: int, out: int, r: int, inp: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(n, out, r, generator=gen, dtype=torch.float64)
    a = torch.randn(n, r, inp, generator=gen, dtype=torch.float64)
    return b, a


def test_factors_give_the_optimal_truncation_per_matrix() -> None:
    b, a = batch(3, 20, 6, 14, seed=0)
    ranks = [1, 3, 6]
    for (bk, ak), k, bi, ai in zip(truncated_factors(b, a, ranks=ranks), ranks, b, a, strict=True):
        assert bk.shape == (20, k) and ak.shape == (k, 14)
        assert bk.dtype == torch.float64
        delta = (bi @ ai).numpy()
        best = dense_best(delta, k)
        assert np.linalg.norm((bk @ ak).numpy() - best) <= 1e-12 * np.linalg.norm(delta)


def test_negative_scale_is_baked_in() -> None:
    b, a = batch(1, 12, 4, 9, seed=1)
    scale = -0.75
    ((bk, ak),) = truncated_factors(b * scale, a, ranks=[2])
    delta = scale * (b[0] @ a[0]).numpy()
    assert np.allclose((bk @ ak).numpy(), dense_best(delta, 2), rtol=0, atol=1e-12)


def test_split_is_balanced() -> None:
    # B′ = U_k Σ_k^½ and A′ = Σ_k^½ V_kᵀ: column j of B′ and row j of A′ both have norm √σ_j
    b, a = batch(1, 16, 5, 11, seed=2)
    ((bk, ak),) = truncated_factors(b, a, ranks=[3])
    sigma = np.linalg.svd((b[0] @ a[0]).numpy(), compute_uv=False)[:3]
    assert np.allclose(bk.norm(dim=0).numpy(), np.sqrt(sigma), rtol=1e-12)
    assert np.allclose(ak.norm(dim=1).numpy(), np.sqrt(sigma), rtol=1e-12)
    assert np.allclose((ak @ ak.T).numpy(), np.diag(sigma), atol=1e-12)  # orthogonal rows


def test_rank_past_the_matrix_size_is_cut() -> None:
    b, a = batch(1, 3, 8, 5, seed=3)  # r = 8 > min(out, in) = 3
    ((bk, ak),) = truncated_factors(b, a, ranks=[8])
    assert bk.shape == (3, 3) and ak.shape == (3, 5)
    assert np.allclose((bk @ ak).numpy(), (b[0] @ a[0]).numpy(), atol=1e-12)


def test_deterministic_signs() -> None:
    b, a = batch(1, 10, 4, 7, seed=4)
    ((bk, ak),) = truncated_factors(b, a, ranks=[2])
    ((bk2, ak2),) = truncated_factors(-b, -a, ranks=[2])  # same product, other factors
    assert torch.allclose(bk, bk2, atol=1e-12) and torch.allclose(ak, ak2, atol=1e-12)
    pivot = bk.abs().argmax(dim=0)
    assert bool((bk[pivot, torch.arange(2)] > 0).all())


@pytest.mark.parametrize(
    ("kept", "error"), [(1.0, 0.0), (0.75, 0.5), (0.0, 1.0), (1.0 + 1e-15, 0.0)]
)
def test_relative_error(kept: float, error: float) -> None:
    assert relative_error(kept) == pytest.approx(error)
    assert not math.isnan(relative_error(kept))
