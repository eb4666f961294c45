"""Compare two thin products ``ΔW_A = s_A·B_A·A_A`` and ``ΔW_B = s_B·B_B·A_B`` from their factors.

Nothing here forms an ``out × in`` matrix. With ``B_A`` of shape ``(out, r_A)``, ``A_A`` of
shape ``(r_A, in)`` and likewise for ``B`` (ranks may differ):

* **Difference.** ``ΔW_A − ΔW_B = [s_A·B_A, −s_B·B_B] · [A_A; A_B]`` is itself a thin
  product of inner dimension ``r_A + r_B``; its singular values come from
  :func:`lora_audit.linalg.spectral.qr_singular_values` by QR (backward stable, so the error in
  ``‖ΔW_A − ΔW_B‖_F`` is ``O(ε·‖ΔW_A‖)`` even when the two updates nearly cancel; a Gram
  formula would lose half the digits there). ``‖·‖_F = √Σσᵢ²`` and ``‖·‖₂ = σ₁``.
* **Inner product.** ``⟨ΔW_A, ΔW_B⟩_F = s_A·s_B·Σ (B_AᵀB_B) ⊙ (A_A·A_Bᵀ)`` from two
  ``r_A × r_B`` products; the cosine similarity is ``⟨ΔW_A, ΔW_B⟩_F / (‖ΔW_A‖_F·‖ΔW_B‖_F)``.
* **Subspaces.** The top-``k`` left (column space, the output side of ``B·A``) and right (row
  space, the input side) singular vectors of each update come from the factored SVD
  :func:`lora_audit.linalg.spectral.svd_host`. The principal angles ``0 ≤ θ₁ ≤ … ≤ θ_k ≤ π/2``
  between
  two orthonormal bases ``Q_A``, ``Q_B`` of shape ``(n, k)`` are ``arccos`` of the singular
  values of the ``k × k`` matrix ``Q_AᵀQ_B``, and, for the small angles where ``arccos`` is
  ill-conditioned (``cos²θ ≥ ½``), ``arcsin`` of the singular values of
  ``Q_B − Q_A(Q_AᵀQ_B)`` (Björck & Golub, 1973; Knyazev & Argentati, 2002; the same rule as
  :func:`scipy.linalg.subspace_angles`).
* **Overlap.** ``φ = ‖Q_AᵀQ_B‖_F² / k = mean cos²θᵢ``, in ``[0, 1]``: 1 when the two
  subspaces coincide, 0 when they are orthogonal, about ``k/n`` for random subspaces of an
  ``n``-dimensional space. It is the normalised subspace similarity of Hu et al. (2021),
  §7.2, with ``i = j = k``.

``k`` is ``min(top_k, rank_num(ΔW_A), rank_num(ΔW_B))``, with the numerical rank counting the
singular values above ``σ₁·max(out, in)·ε`` (numpy's ``matrix_rank`` tolerance); singular
vectors beyond it are arbitrary. A top-``k`` subspace is well defined only when
``σ_k > σ_{k+1}``; with a near tie the angles measure an arbitrary choice within the tie.

For an embedding, PEFT's ``ΔW = s·(B·A)ᵀ``: norms, the cosine and the angles are those of
``B·A``, whose left space is the embedding dimension and right space the vocabulary.

References
----------
Å. Björck and G. H. Golub, "Numerical methods for computing angles between linear subspaces",
Math. Comp. 27 (1973). A. V. Knyazev and M. E. Argentati, "Principal angles between subspaces
in an A-based scalar product", SIAM J. Sci. Comput. 23 (2002). E. J. Hu et al., "LoRA:
Low-Rank Adaptation of Large Language Models" (2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from lora_audit.linalg.spectral import qr_singular_values, svd_host

Float64Array = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class PairMetrics:
    """How two updates of the same shape differ.

    Attributes
    ----------
    norm_a, norm_b
        ``‖ΔW_A‖_F`` and ``‖ΔW_B‖_F``.
    difference_norm
        ``‖ΔW_A − ΔW_B‖_F``.
    difference_spectral_norm
        ``‖ΔW_A − ΔW_B‖₂``.
    inner_product
        ``⟨ΔW_A, ΔW_B⟩_F``.
    k
        Dimension of the compared subspaces (0 when either update is zero).
    left_angles, right_angles
        Principal angles in radians, ascending, ``k`` values each.
    left_overlap, right_overlap
        ``mean cos²θ`` over the ``k`` angles; ``None`` when ``k = 0``.
    """

    norm_a: float
    norm_b: float
    difference_norm: float
    difference_spectral_norm: float
    inner_product: float
    k: int
    left_angles: tuple[float, ...]
    right_angles: tuple[float, ...]
    left_overlap: float | None
    right_overlap: float | None

    @property
    def relative_difference(self) -> float | None:
        """``‖ΔW_A − ΔW_B‖_F / ‖ΔW_A‖_F``; ``None`` when ``ΔW_A = 0``."""
        return self.difference_norm / self.norm_a if self.norm_a > 0 else None

    @property
    def cosine(self) -> float | None:
        """``⟨ΔW_A, ΔW_B⟩_F / (‖ΔW_A‖_F·‖ΔW_B‖_F)``; ``None`` when either is zero."""
        if self.norm_a == 0 or self.norm_b == 0:
            return None
        return max(-1.0, min(1.0, self.inner_product / (self.norm_a * self.norm_b)))


def compare_factors(
    b_a: Float64Array,
    a_a: Float64Array,
    b_b: Float64Array,
    a_b: Float64Array,
    *,
    scale_a: float,
    scale_b: float,
    top_k: int,
) -> PairMetrics:
    """Difference, cosine and subspace angles of ``s_A·B_A·A_A`` and ``s_B·B_B·A_B``.

    Parameters
    ----------
    b_a : ndarray of shape (out, r_A)
    a_a : ndarray of shape (r_A, in)
    b_b : ndarray of shape (out, r_B)
    a_b : ndarray of shape (r_B, in)
        Any float dtype (computed in float64); finite.
    scale_a, scale_b
        The scales ``s_A`` and ``s_B``.
    top_k
        At most this many leading singular directions are compared (≥ 1).

    Returns
    -------
    PairMetrics

    Raises
    ------
    ValueError
        When the two products differ in shape, or ``top_k < 1``.
    """
    out, inp = b_a.shape[0], a_a.shape[1]
    if (b_b.shape[0], a_b.shape[1]) != (out, inp):
        raise ValueError(f"shapes differ: {out}×{inp} and {b_b.shape[0]}×{a_b.shape[1]}")
    if top_k < 1:
        raise ValueError(f"top_k = {top_k} must be at least 1")
    bs_a = np.asarray(b_a, dtype=np.float64) * scale_a
    bs_b = np.asarray(b_b, dtype=np.float64) * scale_b
    a_a64, a_b64 = np.asarray(a_a, dtype=np.float64), np.asarray(a_b, dtype=np.float64)

    stacked_b = np.concatenate([bs_a, -bs_b], axis=1)  # (out, r_A + r_B)
    stacked_a = np.concatenate([a_a64, a_b64], axis=0)  # (r_A + r_B, in)
    sigma_d = qr_singular_values(stacked_b, stacked_a)
    inner = float(((bs_a.T @ bs_b) * (a_a64 @ a_b64.T)).sum())

    u_a, sigma_a, vh_a = svd_host(bs_a, a_a64)
    u_b, sigma_b, vh_b = svd_host(bs_b, a_b64)
    k = min(top_k, numerical_rank(sigma_a, shape=(out, inp)), numerical_rank(sigma_b, (out, inp)))
    left = principal_angles(u_a[:, :k], u_b[:, :k])
    right = principal_angles(vh_a[:k].T, vh_b[:k].T)
    return PairMetrics(
        norm_a=_norm(sigma_a),
        norm_b=_norm(sigma_b),
        difference_norm=_norm(sigma_d),
        difference_spectral_norm=float(sigma_d.max(initial=0.0)),
        inner_product=inner,
        k=k,
        left_angles=tuple(float(t) for t in left),
        right_angles=tuple(float(t) for t in right),
        left_overlap=overlap(left),
        right_overlap=overlap(right),
    )


def numerical_rank(sigma: Float64Array, shape: tuple[int, int]) -> int:
    """How many of the descending ``sigma`` exceed ``σ₁·max(shape)·ε``."""
    top = float(sigma.max(initial=0.0))
    if top == 0.0:
        return 0
    tolerance = top * max(shape) * float(np.finfo(np.float64).eps)
    return int((sigma > tolerance).sum())


def principal_angles(q_a: Float64Array, q_b: Float64Array) -> Float64Array:
    """Principal angles between the column spaces of two orthonormal bases, ascending.

    Parameters
    ----------
    q_a : ndarray of shape (n, k)
    q_b : ndarray of shape (n, k)
        Orthonormal columns (float64).

    Returns
    -------
    theta : ndarray of shape (k,)
        Radians in ``[0, π/2]``, ascending: ``arccos`` of the singular values of ``Q_AᵀQ_B``,
        replaced by ``arcsin`` of those of ``Q_B − Q_A(Q_AᵀQ_B)`` where ``cos²θ ≥ ½``.
    """
    k = q_a.shape[1]
    if k == 0:
        return np.zeros(0)
    cross = q_a.T @ q_b  # (k, k)
    cosines = cast("Float64Array", np.linalg.svd(cross, compute_uv=False))  # descending
    sines = cast("Float64Array", np.linalg.svd(q_b - q_a @ cross, compute_uv=False))
    # ascending angles: the largest cosine and the smallest sine belong to θ₁
    small = np.arcsin(np.clip(sines[::-1], 0.0, 1.0))
    large = np.arccos(np.clip(cosines, 0.0, 1.0))
    theta: Float64Array = np.where(cosines**2 >= 0.5, small, large)
    return theta


def overlap(theta: Float64Array) -> float | None:
    """``mean cos²θ`` of principal angles; ``None`` for none."""
    if theta.size == 0:
        return None
    return float(np.mean(np.cos(theta) ** 2))


def _norm(sigma: Float64Array) -> float:
    top = float(sigma.max(initial=0.0))
    if top == 0.0:
        return 0.0
    return top * math.sqrt(float(np.square(sigma / top).sum()))
