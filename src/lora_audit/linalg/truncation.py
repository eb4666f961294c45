"""Pure math for ``compress``: the best rank-k refactorisation of ``ΔW = s·B·A``.

By Eckart–Young, ``ΔW_k = U_k Σ_k V_kᵀ`` (the top k singular triplets) is the closest rank-k
matrix to ``ΔW`` in Frobenius and spectral norm; it keeps exactly ``C(k)`` of the energy and
its relative Frobenius error is ``√(1 − C(k))``. The triplets come from the factors, never
from a dense ``ΔW``. This module is the one home of truncation:

* :func:`gram_truncation` — maps from the Gram matrices the spectra already used (CPU);
* :func:`qr_truncation` — by QR of both factors, where the Gram method is not accurate (CPU);
* :func:`truncated_factors` — the batched torch form, on the compute device (and for DoRA).

One convention for the scale: :func:`split_scale` puts ``√|s|`` into each factor (the sign
into ``B``) before truncating. The new factors split Σ evenly, ``B′ = U_k Σ_k^½`` and
``A′ = Σ_k^½ V_kᵀ``, so both have the same scale (well conditioned in low precision),
``B′·A′ = ΔW_k`` with ``s`` baked in, and signs follow
:func:`~lora_audit.linalg.spectral.fix_signs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from lora_audit.linalg.spectral import gram_factor, svd

Float64Array = npt.NDArray[np.float64]

if TYPE_CHECKING:
    import torch


def truncated_factors(
    b: torch.Tensor, a: torch.Tensor, *, ranks: Sequence[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Balanced rank-``k`` factors of each ``B[i] @ A[i]`` in a batch.

    Parameters
    ----------
    b : torch.Tensor of shape (n, out, r)
        With the layer scale already applied (``s·B``).
    a : torch.Tensor of shape (n, r, in)
    ranks
        ``k`` for each of the ``n`` products, ``1 ≤ k ≤ min(r, out, in)`` (larger values
        are cut to what the product has).

    Returns
    -------
    list of (b_k, a_k)
        ``b_k`` of shape (out, k) and ``a_k`` of shape (k, in), float64 on ``b``'s device,
        with ``b_k @ a_k`` the best rank-k approximation of ``b[i] @ a[i]``.
    """
    u, sigma, vh = svd(b, a)
    out = []
    for i, k in enumerate(ranks):
        k = min(k, sigma.shape[1])
        root = sigma[i, :k].sqrt()
        out.append((u[i, :, :k] * root, root.unsqueeze(1) * vh[i, :k]))
    return out


def relative_error(energy_kept: float) -> float:
    """``‖ΔW − ΔW_k‖_F / ‖ΔW‖_F = √(1 − C(k))`` (0 for an untouched or zero layer)."""
    return math.sqrt(max(0.0, 1.0 - energy_kept))


def gram_truncation(
    gram_b: Float64Array, gram_a: Float64Array, *, rank: int
) -> tuple[Float64Array, Float64Array]:
    """Maps that turn ``B`` and ``A`` into balanced factors of the best rank-k ``B·A``.

    With ``W_B``, ``W_A`` the Gram factors of :func:`gram_singular_values` (``WᵀW = G``) and
    the core ``W_B W_Aᵀ = U Σ Vᵀ``, there is a matrix ``Q_B`` with orthonormal columns and
    ``B = Q_B W_B`` (and likewise ``Aᵀ = Q_A W_A``), so ``B·A = (Q_B U) Σ (Q_A V)ᵀ``. Since
    ``U_k Σ_k = W_B W_Aᵀ V_k``, the top-k triplets need neither ``Q`` nor an inverse::

        B′ = B · (W_Aᵀ V_k Σ_k^-½)  = Q_B U_k Σ_k^½      (out, k)
        A′ = (Σ_k^-½ U_kᵀ W_B) · A  = Σ_k^½ V_kᵀ Q_Aᵀ    (k, in)

    and ``B′·A′ = ΔW_k`` (Eckart–Young). Two thin products replace the QR of both factors.
    Accuracy is that of the Gram method (the module docstring): use it where ``auto``
    accepts a layer's Gram spectrum, QR (:func:`qr_truncation`) elsewhere. Singular values
    at or below the Gram error bound are rounding noise, not directions: their columns of
    ``B′`` and rows of ``A′`` are set to zero, which changes ``ΔW_k`` by less than that bound.

    Parameters
    ----------
    gram_b : ndarray of shape (r, r)
        ``BᵀB``, float64.
    gram_a : ndarray of shape (r, r)
        ``A·Aᵀ``, float64.
    rank
        ``k``; cut to ``r``.

    Returns
    -------
    map_b : ndarray of shape (r, k)
    map_a : ndarray of shape (k, r)
        Float64; ``B @ map_b`` and ``map_a @ A`` are the new factors (signs not yet fixed,
        see :func:`fix_signs`).
    """
    factor_b = gram_factor(gram_b[None])[0]
    factor_a = gram_factor(gram_a[None])[0]
    u, sigma, vh = np.linalg.svd(factor_b @ factor_a.T)
    k = min(rank, sigma.shape[0])
    top = np.sqrt(
        max(float(np.linalg.eigvalsh(gram_b)[-1]), 0.0)
        * max(float(np.linalg.eigvalsh(gram_a)[-1]), 0.0)
    )
    floor = np.sqrt(np.finfo(np.float64).eps) * top
    kept = sigma[:k]
    inv_root = np.zeros(k)
    np.divide(1.0, np.sqrt(kept), out=inv_root, where=kept > floor)
    map_b: Float64Array = (factor_a.T @ vh[:k].T) * inv_root
    map_a: Float64Array = inv_root[:, None] * (u[:, :k].T @ factor_b)
    return map_b, map_a


def qr_truncation(
    b: Float64Array, a: Float64Array, *, rank: int
) -> tuple[Float64Array, Float64Array]:
    """Balanced factors of the best rank-k ``B·A`` by QR of both factors (numpy, float64).

    The same triplets as :func:`svd` (backward stable), for one pair of factors on the host.

    Parameters
    ----------
    b : ndarray of shape (out, r)
    a : ndarray of shape (r, in)
    rank
        ``k``; cut to ``min(r, out, in)``.

    Returns
    -------
    b_k : ndarray of shape (out, k)
    a_k : ndarray of shape (k, in)
        ``b_k @ a_k`` is the best rank-k approximation of ``b @ a`` (signs not yet fixed).
    """
    q_b, r_b = np.linalg.qr(b)
    q_a, r_a = np.linalg.qr(a.T)
    u, sigma, vh = np.linalg.svd(r_b @ r_a.T)
    k = min(rank, sigma.shape[0])
    root = np.sqrt(sigma[:k])
    b_k: Float64Array = q_b @ (u[:, :k] * root)
    a_k: Float64Array = (root[:, None] * vh[:k]) @ q_a.T
    return b_k, a_k


def split_scale(scale: float) -> tuple[float, float]:
    """Factors for ``B′`` and ``A′`` whose product is ``scale``, of equal magnitude."""
    root = math.sqrt(abs(scale))
    return math.copysign(root, scale), root
