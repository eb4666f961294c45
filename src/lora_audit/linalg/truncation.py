"""Pure math for ``compress``: the best rank-k refactorisation of ``ΔW = s·B·A``.

By Eckart–Young, ``ΔW_k = U_k Σ_k V_kᵀ`` (the top k singular triplets) is the closest rank-k
matrix to ``ΔW`` in Frobenius and spectral norm; it keeps exactly ``C(k)`` of the energy and
its relative Frobenius error is ``√(1 − C(k))``. The triplets come from the factors
(:func:`lora_audit.linalg.spectral.svd`), never from a dense ``ΔW``.

The new factors split Σ evenly, ``B′ = U_k Σ_k^½`` and ``A′ = Σ_k^½ V_kᵀ``, so both have the
same scale (well conditioned in low precision) and ``B′·A′ = ΔW_k`` with the scale ``s``
baked in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lora_audit.linalg.spectral import svd

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
