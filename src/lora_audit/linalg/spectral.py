"""Singular values and vectors of thin products ``s·B·A``, without forming ``B·A``.

For ``B`` of shape ``(out, r)`` and ``A`` of shape ``(r, in)``, the non-zero singular values
of ``B·A`` are those of a small core matrix built from the two factors:

* **QR** (``method="qr"``): ``B = Q_B R_B`` and ``Aᵀ = Q_A R_A`` (thin QR), then
  ``B·A = Q_B (R_B R_Aᵀ) Q_Aᵀ``; the SVD of the ``r×r`` core ``R_B R_Aᵀ = U Σ Vᵀ`` gives
  ``B·A = (Q_B U) Σ (Q_A V)ᵀ``. Backward stable: errors are ``O(ε·‖B‖·‖A‖)``.
  Cost ``O((in + out)·r²)``.
* **Gram** (``method="gram"``, values only): eigendecompositions ``BᵀB = V_B Λ_B V_Bᵀ`` and
  ``A·Aᵀ = V_A Λ_A V_Aᵀ`` give the core ``Λ_B^½ V_Bᵀ V_A Λ_A^½`` with the same singular values.
  About half the flops of QR and all of them in matrix products, but squaring the factors
  limits the accuracy of the smallest singular values to ``O(√ε·‖B‖·‖A‖)``.
* **auto**: Gram, then QR again for any matrix in the batch where Gram's error bound
  ``√ε·‖B‖·‖A‖`` exceeds ``1e-7·σ₁`` (so that every value is accurate to well below
  ``1e-6·σ₁``); in practice, trained adapters rarely need the second pass.

The torch functions take batches: ``B`` of shape ``(n, out, r)`` and ``A`` of shape
``(n, r, in)`` in the compute dtype (float64 for accuracy) on any device; torch is imported
only when one of them is called. The numpy functions (:func:`gram_singular_values`,
:func:`qr_singular_values`) do the same math on the host, from the Gram matrices (batched) or
from one pair of factors, and are what the engine uses on the CPU and to finish GPU batches:

* :func:`gram_singular_values` takes the core as ``R_B·R_Aᵀ`` with ``R`` the Cholesky factor
  of each Gram (``RᵀR = G``). Any ``W`` with ``WᵀW = G`` gives the same singular values
  (``σ(W_B W_Aᵀ)² = λ(G_B G_A)``), so this is the Gram method above with the same error
  bound, but a Cholesky factorisation costs a small fraction of an eigendecomposition. A Gram
  that is singular to working precision (an untrained layer, ``r > out``) falls back to
  ``W = Λ^½Vᵀ`` from ``eigh``. ``‖B‖₂² = λ_max(BᵀB)`` comes from ``eigvalsh``.

References
----------
Golub & Van Loan, *Matrix Computations*, 4th ed., §2.4 and §5.2 (QR-based SVD of products).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt

from lora_audit.choices import MethodName

if TYPE_CHECKING:
    import torch


Float64Array = npt.NDArray[np.float64]

#: Core factorisation (defined with the other choices in :mod:`lora_audit.choices`).
Method = MethodName

#: Gram's error bound must stay below this fraction of σ₁, or ``auto`` redoes the matrix by QR.
GRAM_RELATIVE_TOLERANCE = 1e-7


def singular_values(b: torch.Tensor, a: torch.Tensor, *, method: Method = "auto") -> torch.Tensor:
    """Singular values of each ``B[i] @ A[i]`` in a batch, descending.

    Parameters
    ----------
    b : torch.Tensor of shape (n, out, r)
    a : torch.Tensor of shape (n, r, in)
        Same dtype and device as ``b``; use float64 for results accurate to ``1e-6``.
    method : {"auto", "qr", "gram"}
        See the module docstring for the accuracy/speed trade-off.

    Returns
    -------
    sigma : torch.Tensor of shape (n, r)
        Descending; padded with zeros past ``min(r, out, in)``.
    """
    r = b.shape[2]
    if method == "qr":
        sigma = _svdvals_qr(b, a)
    else:
        sigma, error_bound = _svdvals_gram(b, a)
        if method == "auto":
            redo = error_bound > GRAM_RELATIVE_TOLERANCE * sigma[:, 0]
            redo &= error_bound > 0
            if bool(redo.any()):
                sigma = sigma.clone()
                sigma[redo] = _svdvals_qr(b[redo], a[redo])
    return _pad(sigma, r)


def _svdvals_qr(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    import torch

    r_b = torch.linalg.qr(b, mode="r").R  # (n, min(out, r), r)
    r_a = torch.linalg.qr(a.mT, mode="r").R  # (n, min(in, r), r)
    sigma = torch.linalg.svdvals(r_b @ r_a.mT)
    return _pad(sigma, b.shape[2])


def _svdvals_gram(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    lam_b, vec_b = torch.linalg.eigh(b.mT @ b)  # (n, r), (n, r, r)
    lam_a, vec_a = torch.linalg.eigh(a @ a.mT)
    root_b = lam_b.clamp_min(0).sqrt()
    root_a = lam_a.clamp_min(0).sqrt()
    core = (root_b.unsqueeze(-1) * vec_b.mT) @ (vec_a * root_a.unsqueeze(-2))
    sigma = torch.linalg.svdvals(core)
    eps = torch.finfo(b.dtype).eps
    error_bound = (eps**0.5) * root_b[:, -1] * root_a[:, -1]
    return sigma, error_bound


def _pad(sigma: torch.Tensor, r: int) -> torch.Tensor:
    import torch

    if sigma.shape[1] >= r:
        return sigma
    return torch.cat([sigma, sigma.new_zeros(sigma.shape[0], r - sigma.shape[1])], dim=1)


def svd(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of each ``B[i] @ A[i]`` from its factors, by QR, with deterministic signs.

    Parameters
    ----------
    b : torch.Tensor of shape (n, out, r)
    a : torch.Tensor of shape (n, r, in)

    Returns
    -------
    u : torch.Tensor of shape (n, out, k)
    sigma : torch.Tensor of shape (n, k)
    vh : torch.Tensor of shape (n, k, in)
        With ``k = min(r, out, in)``, ``B @ A ≈ u @ diag(sigma) @ vh``, ``sigma`` descending,
        and each column of ``u`` signed so that its entry of largest magnitude is positive.
    """
    import torch

    q_b, r_b = torch.linalg.qr(b)  # (n, out, kb), (n, kb, r)
    q_a, r_a = torch.linalg.qr(a.mT)  # (n, in, ka), (n, ka, r)
    u_core, sigma, vh_core = torch.linalg.svd(r_b @ r_a.mT, full_matrices=False)
    u = q_b @ u_core
    vh = vh_core @ q_a.mT
    pivot = u.abs().argmax(dim=1, keepdim=True)  # (n, 1, k)
    signs = torch.sign(torch.gather(u, 1, pivot))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return u * signs, sigma, vh * signs.mT


def svd_host(b: Float64Array, a: Float64Array) -> tuple[Float64Array, Float64Array, Float64Array]:
    """Thin SVD of one ``B @ A`` from its factors, by QR (numpy, float64): :func:`svd` on the host.

    Parameters
    ----------
    b : ndarray of shape (out, r)
    a : ndarray of shape (r, in)

    Returns
    -------
    u : ndarray of shape (out, k)
    sigma : ndarray of shape (k,)
    vh : ndarray of shape (k, in)
        With ``k = min(r, out, in)``, ``B @ A ≈ u @ diag(sigma) @ vh``, ``sigma`` descending,
        each column of ``u`` signed so that its entry of largest magnitude is positive (the
        convention of :func:`svd` and :func:`fix_signs`).
    """
    q_b, r_b = np.linalg.qr(b)  # (out, kb), (kb, r)
    q_a, r_a = np.linalg.qr(a.T)  # (in, ka), (ka, r)
    u_core, sigma, vh_core = np.linalg.svd(r_b @ r_a.T, full_matrices=False)
    u = np.ascontiguousarray(q_b @ u_core)
    vh = np.ascontiguousarray(vh_core @ q_a.T)
    fix_signs(u, vh)
    return u, cast("Float64Array", sigma), vh


def gram_singular_values(
    gram_b: Float64Array, gram_a: Float64Array
) -> tuple[Float64Array, Float64Array]:
    """Singular values of each ``B[i] @ A[i]`` from its Gram matrices (numpy, float64).

    Parameters
    ----------
    gram_b : ndarray of shape (n, r, r)
        ``B[i]ᵀ B[i]``.
    gram_a : ndarray of shape (n, r, r)
        ``A[i] A[i]ᵀ``. Both finite (the caller checks their diagonals).

    Returns
    -------
    sigma : ndarray of shape (n, r)
        Descending; values past ``rank(B·A)`` are rounding noise of order the error bound.
    error_bound : ndarray of shape (n,)
        ``√ε·‖B‖₂·‖A‖₂``: the Gram method's error on every value (see the module docstring);
        ``auto`` redoes a matrix by QR when it exceeds ``GRAM_RELATIVE_TOLERANCE·σ₁``.
    """
    factor_b = gram_factor(gram_b)
    factor_a = gram_factor(gram_a)
    core = factor_b @ factor_a.swapaxes(-1, -2)
    sigma = cast("Float64Array", np.linalg.svd(core, compute_uv=False))
    top_b = np.linalg.eigvalsh(gram_b)[:, -1]
    top_a = np.linalg.eigvalsh(gram_a)[:, -1]
    norms = np.sqrt(np.clip(top_b, 0.0, None) * np.clip(top_a, 0.0, None))
    error_bound: Float64Array = np.sqrt(np.finfo(np.float64).eps) * norms
    return sigma, error_bound


def gram_factor(gram: Float64Array) -> Float64Array:
    """``W`` of shape (n, r, r) with ``WᵀW = G`` for each PSD ``G``: Cholesky, else ``Λ^½Vᵀ``."""
    try:
        return cast("Float64Array", np.linalg.cholesky(gram).swapaxes(-1, -2))
    except np.linalg.LinAlgError:
        pass
    out = np.empty_like(gram)
    for i, g in enumerate(gram):
        try:
            out[i] = np.linalg.cholesky(g).T
        except np.linalg.LinAlgError:  # singular to working precision
            lam, vec = np.linalg.eigh(g)
            out[i] = np.sqrt(np.clip(lam, 0.0, None))[:, None] * vec.T
    return out


def qr_singular_values(b: Float64Array, a: Float64Array) -> Float64Array:
    """Singular values of ``B @ A`` for one pair of factors by QR (numpy, float64).

    Parameters
    ----------
    b : ndarray of shape (out, r)
    a : ndarray of shape (r, in)

    Returns
    -------
    sigma : ndarray of shape (r,)
        Descending; padded with zeros past ``min(r, out, in)``.
    """
    r = b.shape[1]
    r_b = cast("Float64Array", np.linalg.qr(b, mode="r"))  # (min(out, r), r)
    r_a = cast("Float64Array", np.linalg.qr(a.T, mode="r"))  # (min(in, r), r)
    sigma = cast("Float64Array", np.linalg.svd(r_b @ r_a.T, compute_uv=False))
    if sigma.shape[0] < r:
        sigma = np.concatenate([sigma, np.zeros(r - sigma.shape[0])])
    return sigma


def kron_singular_values(w1: Float64Array, w2: Float64Array, *, rank: int) -> Float64Array:
    """Singular values of ``kron(W1, W2)`` from the two factors, descending.

    The singular values of a Kronecker product are all products ``σᵢ(W1)·σⱼ(W2)`` (Van Loan,
    *The ubiquitous Kronecker product*, 2000), so two small SVDs replace one of size
    ``(a·o) × (b·i)``. Accuracy is that of the two dense SVDs: ``O(ε·σ₁)``.

    Parameters
    ----------
    w1 : ndarray of shape (a, b), float64
    w2 : ndarray of shape (o, i), float64
    rank
        Length of the result: ``min(a, b)·min(o, i)`` gives every value; shorter truncates,
        longer pads with zeros.

    Returns
    -------
    sigma : ndarray of shape (rank,), float64
    """
    products = np.outer(
        np.linalg.svd(w1, compute_uv=False), np.linalg.svd(w2, compute_uv=False)
    ).reshape(-1)
    sigma = np.sort(products)[::-1][:rank]
    return np.concatenate([sigma, np.zeros(max(0, rank - sigma.size))])


def fix_signs(b: Float64Array, a: Float64Array) -> None:
    """Flip pairs (column of ``b``, row of ``a``) in place so that each column's entry of
    largest magnitude is positive: the sign convention of :func:`svd`, so results do not
    depend on the method or the LAPACK build.

    Parameters
    ----------
    b : ndarray of shape (out, k)
    a : ndarray of shape (k, in)
    """
    if b.size == 0:
        return
    pivot = np.abs(b).argmax(axis=0)
    signs = np.sign(b[pivot, np.arange(b.shape[1])])
    signs[signs == 0] = 1.0
    b *= signs
    a *= signs[:, None]
