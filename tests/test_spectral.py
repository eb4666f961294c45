"""The factored spectral engine against a dense float64 SVD of the materialised product."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_audit.spectral import singular_values, svd

METHODS = ["auto", "qr", "gram"]
TOL = 1e-6  # max |σ − σ_ref| ≤ TOL · σ₁(ref): the contract the README states


def dense_reference(b: torch.Tensor, a: torch.Tensor) -> np.ndarray:
    """σ of each B[i] @ A[i], from numpy's dense float64 SVD, zero-padded to r."""
    r = b.shape[2]
    out = np.zeros((b.shape[0], r))
    for i in range(b.shape[0]):
        s = np.linalg.svd(b[i].double().numpy() @ a[i].double().numpy(), compute_uv=False)
        out[i, : min(r, s.size)] = s[:r]
    return out


def assert_close(sigma: torch.Tensor, ref: np.ndarray) -> None:
    got = sigma.numpy()
    assert got.shape == ref.shape
    top = np.maximum(ref[:, :1], np.finfo(np.float64).tiny)
    err = np.abs(got - ref) / top
    assert np.all(err[ref[:, 0] > 0] <= TOL), err.max()
    assert np.all(got[ref[:, 0] == 0] <= TOL * max(1.0, float(np.abs(got).max(initial=0))))
    assert np.all(np.diff(got, axis=1) <= 1e-12 * np.maximum(got[:, :1], 1)), "not descending"


@st.composite
def factors(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    n = draw(st.integers(1, 3))
    out = draw(st.integers(1, 40))
    inp = draw(st.integers(1, 40))
    r = draw(st.integers(1, 24))  # may exceed min(out, in)
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(n, out, r, generator=gen, dtype=torch.float64)
    a = torch.randn(n, r, inp, generator=gen, dtype=torch.float64)
    case = draw(st.sampled_from(["plain", "zero_b", "zero_a", "low_rank", "decay", "tiny", "huge"]))
    if case == "zero_b":
        b[0] = 0
    elif case == "zero_a":
        a[-1] = 0
    elif case == "low_rank" and r > 1:
        keep = draw(st.integers(1, r - 1))
        b[:, :, keep:] = 0
    elif case == "decay":
        a = a * torch.logspace(0, -6, r, dtype=torch.float64).reshape(1, r, 1)
    elif case == "tiny":
        b, a = b * 1e-20, a * 1e-15
    elif case == "huge":
        b, a = b * 1e15, a * 1e10
    # round to the storage dtype, as a file would hold them, then compute in float64
    b = b.to(dtype).to(torch.float64) if case not in {"tiny", "huge"} else b
    a = a.to(dtype).to(torch.float64) if case not in {"tiny", "huge"} else a
    return b, a


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
