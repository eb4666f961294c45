"""The certified top spectrum of a dense ΔW against a dense float64 SVD (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lora_audit.linalg.delta import delta_spectrum, difference  # noqa: E402


def _matrix(out: int, inp: int, decay: float, *, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = min(out, inp)
    u = torch.linalg.qr(torch.randn(out, r, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(inp, r, generator=g, dtype=torch.float64)).Q
    s = decay ** torch.arange(r, dtype=torch.float64)
    return (u * s) @ v.T


def _oracle(d: torch.Tensor, tau: float) -> tuple[np.ndarray, int]:
    s = np.linalg.svd(d.numpy(), compute_uv=False)
    c = np.cumsum(s**2)
    return s, int(np.argmax(c >= tau * float((d * d).sum()))) + 1


@pytest.mark.parametrize(("out", "inp", "decay"), [(300, 200, 0.7), (160, 400, 0.9)])
def test_krylov_path_matches_dense_svd(out: int, inp: int, decay: float) -> None:
    d = _matrix(out, inp, decay)
    sp = delta_spectrum(d, tau=0.9, vectors=True)
    ref, k_tau = _oracle(d, 0.9)
    assert sp.method == "krylov" and not sp.high_rank
    assert sp.energy_rank == k_tau
    k = sp.sigma.numel()
    np.testing.assert_allclose(sp.sigma.numpy(), ref[:k], rtol=1e-6, atol=0)
    assert sp.bound <= 1e-6
    assert sp.total_energy == pytest.approx(float((ref**2).sum()), rel=1e-12)
    assert sp.u is not None and sp.v is not None
    best = (sp.u * sp.sigma) @ sp.v.T  # Eckart–Young: the rank-k optimum's error is the tail
    err = float(torch.linalg.matrix_norm(d - best))
    assert err == pytest.approx(float(np.sqrt((ref[k:] ** 2).sum())), rel=1e-6)


def test_flat_spectrum_is_high_rank_and_exact() -> None:
    d = _matrix(200, 100, 1.0)
    sp = delta_spectrum(d, tau=0.9)
    ref, k_tau = _oracle(d, 0.9)
    assert sp.method == "full_svd" and sp.high_rank
    assert sp.energy_rank == k_tau == 90
    np.testing.assert_allclose(sp.sigma.numpy(), ref[:k_tau], rtol=1e-12)


def test_fixed_rank_and_zero() -> None:
    d = _matrix(300, 200, 0.7)
    sp = delta_spectrum(d, tau=0.5, rank=20, vectors=True)
    assert sp.sigma.numel() >= 20 and sp.u is not None and sp.u.shape == (300, sp.sigma.numel())
    ref, _ = _oracle(d, 0.5)
    np.testing.assert_allclose(sp.sigma[:20].numpy(), ref[:20], rtol=1e-6)
    zero = delta_spectrum(torch.zeros(80, 90, dtype=torch.float64), tau=0.9)
    assert zero.method == "zero" and zero.energy_rank == 0 and zero.total_energy == 0.0


def test_difference_is_exact_for_bf16() -> None:
    a = torch.randn(50, 40).to(torch.bfloat16)
    b = (a.float() + 1e-3 * torch.randn(50, 40)).to(torch.bfloat16)
    d = difference(b, a)
    assert d.dtype == torch.float64
    assert torch.equal(d, b.double() - a.double())
    assert torch.equal((d + a.double()).to(torch.bfloat16), b)
