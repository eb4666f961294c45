"""Top singular triplets of an implicit operator by a randomized block Krylov method.

Pure math on torch tensors, batched over ``n`` layers of equal shape. See
:func:`top_triplets` for the method, its stopping rule and its guarantees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lora_audit.linalg.operators import Operator

if TYPE_CHECKING:
    import torch


#: Default relative residual tolerance of the iterative triplets.
TOLERANCE = 1e-8


#: Rayleigh–Ritz (an ``m×m`` eigenproblem) runs each time the basis has grown by this factor,
#: so that its cost stays a fixed multiple of the last one's instead of growing with the steps.
CHECK_GROWTH = 1.25


@dataclass(frozen=True, kw_only=True)
class KrylovOptions:
    """Settings of :func:`top_triplets`.

    Attributes
    ----------
    tolerance
        Stop when every wanted triplet's residual is at most ``tolerance·σ̃₁``.
    oversample
        Extra vectors in the start block beyond the ``k`` wanted (more: fewer steps).
    max_steps
        Most Krylov blocks added before giving up (the result is then flagged).
    seed
        Seed of the Gaussian start block.
    """

    tolerance: float = TOLERANCE
    oversample: int = 10
    max_steps: int = 60
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class Triplets:
    """The top singular triplets of a batch of operators, from :func:`top_triplets`.

    Attributes
    ----------
    u : torch.Tensor of shape (n, out, k)
    sigma : torch.Tensor of shape (n, k)
        Descending Ritz values (lower bounds of the exact ones).
    v : torch.Tensor of shape (n, in, k)
    residual : torch.Tensor of shape (n, k)
        ``ρᵢ = ‖M vᵢ − σ̃ᵢ uᵢ‖``.
    subspace_error : torch.Tensor of shape (n,)
        ``maxᵢ ρᵢ / (σ̃ₖ − σ̃ₖ₊₁)``, the estimated sine of the largest angle between the
        computed and the exact top-k subspaces (0 when exact, ``inf`` without a gap).
    converged : torch.Tensor of shape (n,), bool
    steps : int
        Krylov blocks used.
    """

    u: torch.Tensor
    sigma: torch.Tensor
    v: torch.Tensor
    residual: torch.Tensor
    subspace_error: torch.Tensor
    converged: torch.Tensor
    steps: int


def _orth(x: torch.Tensor) -> torch.Tensor:
    import torch

    q: torch.Tensor = torch.linalg.qr(x).Q
    return q


def top_triplets(op: Operator, *, k: int, options: KrylovOptions | None = None) -> Triplets:
    """The ``k`` largest singular triplets of each ``M`` by randomized block Krylov.

    Parameters
    ----------
    op
        A batch of ``n`` operators of shape ``(out, in)``, float64.
    k
        Triplets wanted, ``1 ≤ k``; cut to ``min(out, in)``.
    options
        Tolerance, oversampling, step limit and seed (:class:`KrylovOptions`).

    Returns
    -------
    Triplets
        See :class:`Triplets`. Accuracy: ``|σ̃₁ − σ₁| ≤ ρ₁ ≤ tol·σ̃₁`` when converged; the
        subspaces to within about ``subspace_error`` (module docstring). Cost per step: two
        applications of ``M`` to ``k + oversample`` vectors, plus an SVD of an
        ``in × m`` matrix, ``m`` the size of the Krylov basis so far.
    """
    import torch

    options = options or KrylovOptions()
    n, out, inp = op.shape
    full = min(out, inp)
    k = max(1, min(k, full))
    block = min(k + options.oversample, full)
    device, dtype = op.reference.device, op.reference.dtype
    gen = torch.Generator().manual_seed(options.seed)
    omega = torch.randn(n, inp, block, generator=gen, dtype=torch.float64).to(device, dtype)
    q_all = _orth(op.apply(omega))
    z_all = op.apply_t(q_all)  # Mᵀ Q: Q Qᵀ M = Q z_allᵀ is the Rayleigh–Ritz projection
    gram = z_all.mT @ z_all  # z_allᵀ z_all = Qᵀ M Mᵀ Q, grown block by block
    steps, last, checked = 1, block, 0
    while True:
        m = q_all.shape[-1]
        exhausted = m >= full
        final = exhausted or steps >= options.max_steps
        if final or m >= CHECK_GROWTH * checked:
            lam, vec = torch.linalg.eigh(gram)  # ascending
            sv = lam.flip(-1).clamp_min(0).sqrt()
            kk = min(k, m)
            top_vec = vec.flip(-1)[..., :kk]
            sigma = sv[..., :kk]
            u = q_all @ top_vec
            v = (z_all @ top_vec) / sigma.clamp_min(1e-300).unsqueeze(-2)
            residual = torch.linalg.vector_norm(op.apply(v) - u * sigma.unsqueeze(-2), dim=-2)
            top = sigma[..., :1]
            relative = torch.where(top > 0, residual / top.clamp_min(1e-300), residual)
            converged = (relative <= options.tolerance).all(dim=-1) | exhausted
            checked = m
            if final or bool(converged.all()):
                break
        # next block: M Mᵀ q_last, orthogonalised against the basis twice ("twice is enough")
        nxt = op.apply(z_all[..., m - last :])  # z_all holds Mᵀ of every basis vector
        for _ in range(2):
            nxt = nxt - q_all @ (q_all.mT @ nxt)
        width = min(block, full - m)
        fresh = _orth(nxt[..., :width])
        fresh = _orth(fresh - q_all @ (q_all.mT @ fresh))
        z_new = op.apply_t(fresh)
        cross = z_all.mT @ z_new
        gram = torch.cat(
            [torch.cat([gram, cross], dim=-1), torch.cat([cross.mT, z_new.mT @ z_new], dim=-1)],
            dim=-2,
        )
        q_all = torch.cat([q_all, fresh], dim=-1)
        z_all = torch.cat([z_all, z_new], dim=-1)
        last = width
        steps += 1
    if sv.shape[-1] > kk and not exhausted:
        gap = (sigma[..., -1] - sv[..., kk]).clamp_min(0)
        worst = residual.max(dim=-1).values
        subspace = torch.where(gap > 0, worst / gap.clamp_min(1e-300), torch.inf)
        subspace = torch.where(worst == 0, torch.zeros_like(subspace), subspace)
    else:  # the basis spans the whole range: Rayleigh–Ritz is exact
        subspace = torch.zeros(n, dtype=dtype, device=device)
    return Triplets(
        u=u,
        sigma=sigma,
        v=v,
        residual=residual,
        subspace_error=subspace,
        converged=converged,
        steps=steps,
    )
