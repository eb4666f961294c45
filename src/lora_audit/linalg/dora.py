"""DoRA's row scales and its Eckart–Young truncation that keeps them (torch, batched).

DoRA's effective weight is ``W′ = diag(c)·(W + s·B·A)`` with row factors
``cᵢ = mᵢ / ‖Wᵢ + s(BA)ᵢ‖`` (PEFT normalises each output row of the ``(out, in)`` weight)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lora_audit.linalg.operators import row_terms

if TYPE_CHECKING:
    import torch


def dora_scale(
    terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor], magnitude: torch.Tensor
) -> torch.Tensor:
    """DoRA's row factors ``cᵢ = mᵢ / ‖Wᵢ + (BA)ᵢ‖``, shape (n, out); 0 for a zero row."""
    import torch

    w2, cross, z2 = terms
    norm = (w2 + 2 * cross + z2).clamp_min(0).sqrt()
    return torch.where(norm > 0, magnitude / norm.clamp_min(1e-300), torch.zeros_like(norm))


def dora_row_scale(
    w: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    *,
    scales: Sequence[float],
    magnitude: torch.Tensor,
) -> torch.Tensor:
    """DoRA's row factors ``cᵢ = mᵢ / ‖Wᵢ + s(BA)ᵢ‖`` of a batch, from the factors.

    Parameters
    ----------
    w : torch.Tensor of shape (n, out, in)
    b : torch.Tensor of shape (n, out, r)
        Unscaled.
    a : torch.Tensor of shape (n, r, in)
    scales
        The ``n`` layer scales.
    magnitude : torch.Tensor of shape (n, out)

    Returns
    -------
    torch.Tensor of shape (n, out)
        Exact up to rounding; 0 for a row whose direction ``Wᵢ + s(BA)ᵢ`` is zero.
    """
    import torch

    s = torch.tensor(list(scales), dtype=w.dtype, device=w.device).reshape(-1, 1, 1)
    return dora_scale(row_terms(w, b * s, a), magnitude)


def dora_truncated(
    w: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    *,
    scales: Sequence[float],
    magnitude: torch.Tensor,
    ranks: Sequence[int],
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The best rank-k DoRA layers that keep every output row's DoRA scale.

    DoRA's effective weight is ``W′ = diag(c)·(W + s·B·A) = diag(c)·W + X`` with
    ``X = diag(c)·s·B·A`` (:func:`dora_row_scale`). Among rank-k DoRA layers whose rows keep
    the scales ``c``, the closest to ``W′`` in Frobenius norm has ``B′A′ = diag(c)⁻¹·X_k``,
    ``X_k`` the best rank-k approximation of ``X`` (Eckart–Young, from the factors), and the
    magnitudes ``m′ᵢ = cᵢ·‖Wᵢ + (B′A′)ᵢ‖`` that make DoRA's own normalisation give back
    ``cᵢ``. Then ``W′_k = diag(c)·W + X_k`` exactly and ``‖W′_k − W′‖_F = ‖X − X_k‖_F``.

    Parameters
    ----------
    w, b, a, scales, magnitude
        As in :func:`dora_row_scale`.
    ranks
        ``k`` per layer (cut to what ``X`` has).

    Returns
    -------
    list of (b_k, a_k, m_k)
        ``b_k`` (out, k) and ``a_k`` (k, in) with the scale baked in (``s = 1``), and the new
        magnitudes ``m_k`` (out,), float64 on ``w``'s device. A row with ``cᵢ = 0`` (zero
        magnitude) gets a zero row in ``b_k`` and ``m′ᵢ = 0``.
    """
    import torch

    from lora_audit.linalg.truncation import truncated_factors

    s = torch.tensor(list(scales), dtype=w.dtype, device=w.device).reshape(-1, 1, 1)
    c = dora_scale(row_terms(w, b * s, a), magnitude)
    factors = truncated_factors(c.unsqueeze(-1) * (b * s), a, ranks=ranks)
    out = []
    for i, (x_b, a_k) in enumerate(factors):
        ci = c[i].unsqueeze(-1)
        b_k = torch.where(ci > 0, x_b / ci.clamp_min(1e-300), torch.zeros_like(x_b))
        w2, cross, z2 = row_terms(w[i : i + 1], b_k.unsqueeze(0), a_k.unsqueeze(0))
        norm = (w2 + 2 * cross + z2).clamp_min(0).sqrt()[0]
        out.append((b_k, a_k, c[i] * norm))
    return out
