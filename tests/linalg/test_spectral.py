"""The factored spectral engine against a dense float64 SVD of the materialised product."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import dense_reference, factors

from lora_audit.linalg.spectral import (
    GRAM_RELATIVE_TOLERANCE,
    fix_signs,
    gram_singular_values,
    singular_values,
    svd,
)
from lora_audit.linalg.truncation import gram_truncation, qr_truncation

METHODS = ["auto", "qr", "gram"]
TOL = 1e-6  # max |σ − σ_ref| ≤ TOL · σ₁(ref): the contract the README states


def assert_close(sigma: torch.Tensor, ref: np.ndarray) -> None:
    got = sigma.numpy()
    assert got.shape == ref.shape
    top = np.maximum(ref[:, :1], np.finfo(np.float64).tiny)
    err = np.abs(got - ref) / top
    assert np.all(err[ref[:, 0] > 0] <= TOL), err.max()
    assert np.all(got[ref[:, 0] == 0] <= TOL * max(1.0, float(np.abs(got).max(initial=0))))
    assert np.all(np.diff(got, axis=1) <= 1e-12 * np.maximum(got[:, :1], 1)), "not descending"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=factors(), method=st.sampled_from(METHODS))
def test_singular_values_match_dense_reference(
    pair: tuple[torch.Tensor, torch.Tensor], method: str
) -> None:
    b, a = pair
    assert_close(singular_values(b, a, method=method), dense_reference(b, a))  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(pair=factors())
def test_svd_reconstructs_product_with_orthonormal_factors(
    pair: tuple[torch.Tensor, torch.Tensor],
) -> None:
    b, a = pair
    u, s, vh = svd(b, a)
    product = b @ a
    scale = max(float(product.abs().max()), 1e-300)
    assert torch.allclose(u @ torch.diag_embed(s) @ vh, product, atol=1e-10 * scale, rtol=0)
    nonzero = s > s[:, :1] * 1e-8
    for i in range(b.shape[0]):
        cols = nonzero[i]
        ui, vi = u[i][:, cols], vh[i][cols]
        eye = torch.eye(int(cols.sum()), dtype=torch.float64)
        assert torch.allclose(ui.T @ ui, eye, atol=1e-8)
        assert torch.allclose(vi @ vi.T, eye, atol=1e-8)


def test_svd_signs_are_deterministic() -> None:
    gen = torch.Generator().manual_seed(1)
    b = torch.randn(2, 30, 6, generator=gen, dtype=torch.float64)
    a = torch.randn(2, 6, 20, generator=gen, dtype=torch.float64)
    u1, _, vh1 = svd(b, a)
    u2, _, vh2 = svd(-b, -a)  # same product, different factors
    assert torch.allclose(u1, u2, atol=1e-10) and torch.allclose(vh1, vh2, atol=1e-10)
    pivots = u1.abs().argmax(dim=1)
    assert bool((torch.gather(u1, 1, pivots.unsqueeze(1)) > 0).all())


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_factors_give_zero_spectrum(method: str) -> None:
    b = torch.zeros(1, 8, 4, dtype=torch.float64)
    a = torch.zeros(1, 4, 5, dtype=torch.float64)
    sigma = singular_values(b, a, method=method)  # type: ignore[arg-type]
    assert sigma.shape == (1, 4) and float(sigma.abs().max()) == 0.0


def test_auto_falls_back_to_qr_when_gram_is_inaccurate() -> None:
    # B's large direction meets A's zero row: ‖B‖‖A‖ ≫ σ₁(BA), where Gram loses accuracy.
    b = torch.tensor([[[1e6, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    a = torch.tensor([[[1e-9, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    ref = dense_reference(b, a)
    assert_close(singular_values(b, a, method="auto"), ref)
    assert_close(singular_values(b, a, method="qr"), ref)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(3)
    b = torch.randn(5, 300, 16, generator=gen, dtype=torch.float64)
    a = torch.randn(5, 16, 200, generator=gen, dtype=torch.float64)
    for method in METHODS:
        cpu = singular_values(b, a, method=method)  # type: ignore[arg-type]
        gpu = singular_values(b.cuda(), a.cuda(), method=method).cpu()  # type: ignore[arg-type]
        assert float(((gpu - cpu).abs() / cpu[:, :1]).max()) <= 1e-6


# --- rank-k refactorisation on the host: gram_truncation, qr_truncation, fix_signs ---------


def _optimal(delta: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense float64 reference: the best rank-k matrix and all singular values."""
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k], s


def _check_truncation(delta: np.ndarray, b_k: np.ndarray, a_k: np.ndarray, k: int) -> None:
    """``b_k @ a_k`` is as good as the best rank-k matrix, and equal to it when that is unique."""
    best, s = _optimal(delta, k)
    norm = max(float(np.linalg.norm(delta)), np.finfo(np.float64).tiny)
    got = b_k @ a_k
    assert b_k.shape[1] == a_k.shape[0] <= k
    assert np.linalg.norm(delta - got) <= np.linalg.norm(delta - best) + TOL * norm
    tail = s[k] if k < s.size else 0.0
    if s.size and s[0] > 0 and s[min(k, s.size) - 1] - tail >= 1e-2 * s[0]:
        assert np.linalg.norm(got - best) <= TOL * norm


def _gram_accepted(b: np.ndarray, a: np.ndarray) -> bool:
    sigma, bound = gram_singular_values((b.T @ b)[None], (a @ a.T)[None])
    return not (bound[0] > GRAM_RELATIVE_TOLERANCE * sigma[0, 0] and bound[0] > 0)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=factors(), k=st.integers(1, 24))
def test_host_truncations_are_optimal(pair: tuple[torch.Tensor, torch.Tensor], k: int) -> None:
    b, a = (t[0].numpy() for t in pair)
    delta = b @ a
    b_q, a_q = qr_truncation(b, a, rank=k)
    _check_truncation(delta, b_q, a_q, k)
    if _gram_accepted(b, a):  # where auto uses the Gram path; QR elsewhere
        map_b, map_a = gram_truncation(b.T @ b, a @ a.T, rank=k)
        _check_truncation(delta, b @ map_b, map_a @ a, k)


def test_gram_truncation_is_balanced_and_orthogonal() -> None:
    gen = np.random.default_rng(3)
    b, a = gen.standard_normal((50, 8)), gen.standard_normal((8, 30)) * 1e-3
    map_b, map_a = gram_truncation(b.T @ b, a @ a.T, rank=5)
    b_k, a_k = b @ map_b, map_a @ a
    sigma = np.linalg.svd(b @ a, compute_uv=False)[:5]
    # B′ = U_k Σ_k^½ and A′ = Σ_k^½ V_kᵀ: B′ᵀB′ = A′A′ᵀ = Σ_k
    assert np.allclose(b_k.T @ b_k, np.diag(sigma), rtol=0, atol=1e-12 * sigma[0])
    assert np.allclose(a_k @ a_k.T, np.diag(sigma), rtol=0, atol=1e-12 * sigma[0])


def test_gram_truncation_zeroes_directions_that_are_rounding_noise() -> None:
    gen = np.random.default_rng(4)
    b = gen.standard_normal((40, 6)) @ np.diag([1.0, 0.5, 0, 0, 0, 0])  # rank 2
    a = gen.standard_normal((6, 25))
    map_b, map_a = gram_truncation(b.T @ b, a @ a.T, rank=5)
    b_k, a_k = b @ map_b, map_a @ a
    assert np.all(b_k[:, 2:] == 0) and np.all(a_k[2:] == 0)
    assert np.allclose(b_k @ a_k, b @ a, rtol=0, atol=1e-12 * np.abs(b @ a).max())


def test_host_paths_follow_the_torch_sign_convention() -> None:
    gen = torch.Generator().manual_seed(5)
    b = torch.randn(1, 30, 6, generator=gen, dtype=torch.float64)
    a = torch.randn(1, 6, 20, generator=gen, dtype=torch.float64)
    u, s, _ = svd(b, a)
    expected_b = (u[0, :, :3] * s[0, :3].sqrt()).numpy()
    b_np, a_np = b[0].numpy(), a[0].numpy()
    b_q, a_q = qr_truncation(b_np, a_np, rank=3)
    map_b, map_a = gram_truncation(b_np.T @ b_np, a_np @ a_np.T, rank=3)
    b_g, a_g = b_np @ map_b, map_a @ a_np
    for b_k, a_k in ((b_q, a_q), (b_g, a_g)):
        fix_signs(b_k, a_k)
        assert np.allclose(b_k, expected_b, rtol=0, atol=1e-10)
        pivot = np.abs(b_k).argmax(axis=0)
        assert np.all(b_k[pivot, np.arange(3)] > 0)
