"""The operators of the base-aware audit, ``M = diag(p)·W + diag(q)·B·A``, and their row terms.

``M`` is applied to a block ``X`` as ``p ⊙ (W X) + q ⊙ (B (A X))``, so ``B·A`` is never formed;
its Frobenius norm comes exactly from the row terms ``‖Wᵢ‖²``, ``⟨Wᵢ, (BA)ᵢ⟩`` and ``‖(BA)ᵢ‖²``
(see :mod:`lora_audit.linalg.against_base`). Torch tensors, batched over layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class Operator:
    """``M = diag(p)·W + diag(q)·B·A`` for a batch of layers (see the module docstring).

    Attributes
    ----------
    w : torch.Tensor of shape (n, out, in) or None
        ``None`` means ``M = diag(q)·B·A`` (no ``W`` term).
    b : torch.Tensor of shape (n, out, r) or None
        With the layer scale applied; ``None`` means ``M = diag(p)·W``.
    a : torch.Tensor of shape (n, r, in) or None
    p, q : torch.Tensor of shape (n, out) or None
        Row scales; ``None`` means all ones.
    """

    w: torch.Tensor | None
    b: torch.Tensor | None = None
    a: torch.Tensor | None = None
    p: torch.Tensor | None = None
    q: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n, out, in)``."""
        if self.w is not None:
            n, out, inp = self.w.shape
        else:
            assert self.b is not None and self.a is not None
            n, out, inp = self.b.shape[0], self.b.shape[1], self.a.shape[2]
        return int(n), int(out), int(inp)

    @property
    def reference(self) -> torch.Tensor:
        """A tensor of the operator's dtype and device."""
        t = self.w if self.w is not None else self.b
        assert t is not None
        return t

    def layer(self, i: int) -> Operator:
        """The operator of layer ``i`` alone (a batch of one)."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[i : i + 1]

        return Operator(
            w=pick(self.w), b=pick(self.b), a=pick(self.a), p=pick(self.p), q=pick(self.q)
        )

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``M X`` for ``X`` of shape (n, in, c); returns shape (n, out, c)."""
        y = None
        if self.w is not None:
            y = self.w @ x
            if self.p is not None:
                y = self.p.unsqueeze(-1) * y
        if self.b is not None and self.a is not None:
            t = self.b @ (self.a @ x)
            t = t if self.q is None else self.q.unsqueeze(-1) * t
            y = t if y is None else y + t
        assert y is not None
        return y

    def apply_t(self, y: torch.Tensor) -> torch.Tensor:
        """``Mᵀ Y`` for ``Y`` of shape (n, out, c); returns shape (n, in, c)."""
        x = None
        if self.w is not None:
            yp = y if self.p is None else self.p.unsqueeze(-1) * y
            x = (yp.mT @ self.w).mT  # W in its stored layout: a transposed W is slow to multiply
        if self.b is not None and self.a is not None:
            yq = y if self.q is None else self.q.unsqueeze(-1) * y
            t = self.a.mT @ (self.b.mT @ yq)
            x = t if x is None else x + t
        assert x is not None
        return x


def row_terms(
    w: torch.Tensor, b: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output row: ``‖Wᵢ‖²``, ``⟨Wᵢ, (BA)ᵢ⟩`` and ``‖(BA)ᵢ‖²``, without forming ``B·A``.

    Parameters
    ----------
    w : torch.Tensor of shape (n, out, in)
    b : torch.Tensor of shape (n, out, r)
    a : torch.Tensor of shape (n, r, in)

    Returns
    -------
    w2, cross, z2 : torch.Tensor of shape (n, out)
        Exact up to rounding; ``O(out·in·r)`` work.
    """
    w2 = (w * w).sum(dim=-1)
    cross = (b * (w @ a.mT)).sum(dim=-1)
    z2 = ((b @ (a @ a.mT)) * b).sum(dim=-1).clamp_min(0)
    return w2, cross, z2


def frobenius_squared(
    terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    p: torch.Tensor | float,
    q: torch.Tensor | float,
) -> torch.Tensor:
    """``‖diag(p)·W + diag(q)·B·A‖_F²`` of each layer from :func:`row_terms`; shape (n,)."""
    w2, cross, z2 = terms
    return (p * p * w2 + 2 * p * q * cross + q * q * z2).sum(dim=-1).clamp_min(0)
