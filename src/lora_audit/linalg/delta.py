"""The certified top singular values of a dense update ``ΔW = W_tuned − W_base``.

Pure math on torch tensors (no files). One layer at a time, float64.

``ΔW`` is formed once in float64: the difference of two bf16/f16/f32 values is exact in float64
(their 24-bit or shorter significands fit in 53 bits), so ``ΔW`` carries no rounding of its own.
It is then an :class:`~lora_audit.linalg.operators.Operator` (``M = W`` with ``W := ΔW``), and
its top triplets come from the one Krylov engine, :func:`lora_audit.linalg.krylov.top_triplets`.

The certificate
---------------
The exact total energy ``E = ‖ΔW‖_F²`` is summed in float64 row block by row block. Krylov
gives Ritz values ``σ̃₁ ≥ … ≥ σ̃ₖ`` and residuals ``ρᵢ = ‖ΔW vᵢ − σ̃ᵢ uᵢ‖`` (``ΔWᵀuᵢ = σ̃ᵢvᵢ``
holds by construction, and the ``uᵢ`` and the ``vᵢ`` are orthonormal). On the Jordan–Wielandt
matrix ``[[0, ΔW], [ΔWᵀ, 0]]`` the pairs ``[uᵢ; vᵢ]/√2`` have the residual block
``R = [ρ-vectors; 0]/√2``, so (Kahan's theorem) each ``σ̃ᵢ`` lies within
``δ = ‖R‖₂ ≤ √(Σᵢ ρᵢ²/2)`` of a singular value, and (interlacing) ``σ̃ᵢ ≤ σᵢ``. Hence
``σ̃ᵢ ≤ σᵢ ≤ σ̃ᵢ + δ`` unless the Krylov space missed one of the top ``k`` singular directions
entirely — an event of probability zero from a Gaussian start block, the same assumption as
every randomized SVD. The search stops when ``δ ≤ tolerance·σ̃ₖ`` (1e-6 by default: every
reported ``σᵢ`` is proven to that relative accuracy) and the Ritz energies, which are lower
bounds, reach ``τ·E``: then ``k@τ`` is at most the ``k`` found, and equals it unless the
cumulative energy lies within the certified error of ``τ`` (reported as ``energy_rank_exact``).

High rank
---------
When ``k@τ`` would be more than :data:`HIGH_RANK_FRACTION` of ``min(out, in)`` (full
fine-tunes often are), Krylov is no faster than LAPACK: the full float64 SVD is taken instead
and the result says so (``method="full_svd"``, ``high_rank=True``). LAPACK's values are
backward stable: ``|σ̃ᵢ − σᵢ| ≤ c·ε·σ₁``, reported as ``bound`` relative to ``σ_{k@τ}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from lora_audit.linalg.krylov import KrylovOptions, top_triplets
from lora_audit.linalg.operators import Operator

if TYPE_CHECKING:
    import torch

#: Default certified relative accuracy of every reported σᵢ.
TOLERANCE = 1e-6
#: Above this fraction of ``min(out, in)`` for ``k``, the full SVD is taken.
HIGH_RANK_FRACTION = 0.25
#: Matrices with ``min(out, in)`` at most this take the full SVD directly (it is cheaper).
SMALL = 64
#: Rows summed at a time for the exact energy.
ROW_BLOCK = 4096

DeltaMethod = Literal["krylov", "full_svd", "zero"]


@dataclass(frozen=True, kw_only=True)
class DeltaSpectrum:
    """The top of ``ΔW``'s spectrum, certified (see the module docstring).

    Attributes
    ----------
    sigma : torch.Tensor of shape (k,)
        The top singular values, descending, float64.
    u : torch.Tensor of shape (out, k) or None
        Left singular vectors (``None`` when not asked for).
    v : torch.Tensor of shape (in, k) or None
        Right singular vectors.
    total_energy
        ``‖ΔW‖_F²``, exact up to float64 rounding.
    energy_rank
        ``k@τ``: the smallest ``k`` with ``Σ_{i≤k} σᵢ² ≥ τ·E`` (0 for a zero ``ΔW``).
    energy_rank_exact
        ``False`` when the cumulative energy at ``k@τ − 1`` is within the certified error of
        ``τ``: ``k@τ`` is then proven to reach ``τ`` but might be one too large.
    method
        ``krylov``, ``full_svd`` or ``zero``.
    high_rank
        ``k@τ > HIGH_RANK_FRACTION·min(out, in)``.
    bound
        Certified relative error of every reported ``σᵢ`` (``≤ tolerance`` for Krylov).
    steps
        Krylov blocks used in the last attempt (0 for the full SVD).
    """

    sigma: torch.Tensor
    u: torch.Tensor | None
    v: torch.Tensor | None
    total_energy: float
    energy_rank: int
    energy_rank_exact: bool
    method: DeltaMethod
    high_rank: bool
    bound: float
    steps: int


def difference(tuned: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``ΔW = tuned − base`` in float64 (exact for bf16/f16/f32 inputs; module docstring)."""
    import torch

    return tuned.to(torch.float64) - base.to(torch.float64)


def frobenius_squared_streamed(x: torch.Tensor, *, rows: int = ROW_BLOCK) -> float:
    """``‖x‖_F²`` of a 2-D tensor, summed in float64 ``rows`` rows at a time."""
    import torch

    total = 0.0
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows].to(torch.float64)
        total += float((block * block).sum())
    return total


def delta_spectrum(
    delta: torch.Tensor,
    *,
    tau: float,
    rank: int | None = None,
    vectors: bool = False,
    tolerance: float = TOLERANCE,
    high_rank_fraction: float = HIGH_RANK_FRACTION,
    options: KrylovOptions | None = None,
) -> DeltaSpectrum:
    """The certified top of the spectrum of one dense ``ΔW`` (module docstring).

    Parameters
    ----------
    delta : torch.Tensor of shape (out, in)
        float64.
    tau
        Energy threshold: enough values are found to reach ``k@τ``.
    rank
        Also find at least this many values (extraction at a fixed rank).
    vectors
        Return the singular vectors too.
    tolerance
        Certified relative accuracy of each ``σᵢ`` asked of the Krylov path.
    high_rank_fraction
        Take the full SVD once ``k`` would exceed this fraction of ``min(out, in)``.
    options
        Oversampling, step limit and seed of the Krylov engine (its tolerance is set here).
    """
    import torch

    out, inp = delta.shape
    full = min(out, inp)
    energy = frobenius_squared_streamed(delta)
    if energy == 0.0:
        empty = delta.new_zeros(0)
        zeros = (delta.new_zeros(out, 0), delta.new_zeros(inp, 0)) if vectors else (None, None)
        return DeltaSpectrum(
            sigma=empty, u=zeros[0], v=zeros[1], total_energy=0.0, energy_rank=0,
            energy_rank_exact=True, method="zero", high_rank=False, bound=0.0, steps=0,
        )  # fmt: skip
    limit = max(1, math.floor(high_rank_fraction * full))
    want = max(rank or 1, 8)
    options = options or KrylovOptions()
    inner = tolerance / 4
    while full > SMALL and want <= limit:
        top = top_triplets(
            Operator(w=delta.unsqueeze(0)),
            k=want,
            options=KrylovOptions(
                tolerance=inner,
                oversample=options.oversample,
                max_steps=options.max_steps,
                seed=options.seed,
            ),
        )
        sigma = top.sigma[0]
        delta_abs = float(torch.linalg.vector_norm(top.residual[0])) / math.sqrt(2)
        smallest = float(sigma[-1])
        if smallest <= 0 or delta_abs > tolerance * smallest:
            if not bool(top.converged[0]) or smallest <= 0 or inner < 1e-15:
                break  # Krylov cannot certify this one: LAPACK below
            inner *= max(1e-4, 0.5 * tolerance * smallest / max(delta_abs, 1e-300))
            continue
        bound = delta_abs / smallest
        k_tau, exact = _energy_rank(sigma, energy, tau=tau, bound=bound)
        if k_tau is not None:
            u, v = (top.u[0], top.v[0]) if vectors else (None, None)
            return DeltaSpectrum(
                sigma=sigma, u=u, v=v, total_energy=energy, energy_rank=k_tau,
                energy_rank_exact=exact, method="krylov", high_rank=False, bound=bound,
                steps=top.steps,
            )  # fmt: skip
        want = _next_want(sigma, energy, tau=tau, want=want)
    return _full(delta, energy=energy, tau=tau, rank=rank, vectors=vectors, limit=limit)


def _next_want(sigma: torch.Tensor, energy: float, *, tau: float, want: int) -> int:
    """More values: double, or extrapolate the tail with the smallest one found (larger)."""
    found = float((sigma * sigma).sum())
    smallest = float(sigma[-1])
    guess = want + math.ceil((tau * energy - found) / max(smallest * smallest, 1e-300))
    return max(2 * want, min(guess, 4 * want))


def _energy_rank(
    sigma: torch.Tensor, energy: float, *, tau: float, bound: float
) -> tuple[int | None, bool]:
    """``(k@τ, exact)`` from certified values, or ``(None, …)`` when they do not reach ``τ``."""
    import torch

    lower = torch.cumsum(sigma * sigma, 0)
    reached = torch.nonzero(lower >= tau * energy)
    if reached.numel() == 0:
        return None, True
    k = int(reached[0]) + 1
    if k == 1:
        return 1, True
    upper = float(lower[k - 2]) * (1 + bound) ** 2
    return k, upper < tau * energy


def _full(
    delta: torch.Tensor, *, energy: float, tau: float, rank: int | None, vectors: bool, limit: int
) -> DeltaSpectrum:
    """LAPACK's float64 SVD of the whole ``ΔW``; everything kept up to ``max(k@τ, rank)``."""
    import torch

    if vectors:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    else:
        s = torch.linalg.svdvals(delta)
    cumulative = torch.cumsum(s * s, 0)
    reached = torch.nonzero(cumulative >= tau * energy)
    k_tau = int(reached[0]) + 1 if reached.numel() else int(s.numel())
    keep = min(max(k_tau, rank or 0), int(s.numel()))
    eps = torch.finfo(torch.float64).eps
    smallest = float(s[k_tau - 1])  # σ₁…σ_{k@τ} are certified to ``bound``
    bound = eps * max(delta.shape) * float(s[0]) / smallest if smallest > 0 else math.inf
    return DeltaSpectrum(
        sigma=s[:keep],
        u=u[:, :keep] if vectors else None,
        v=vh[:keep].mT if vectors else None,
        total_energy=energy,
        energy_rank=k_tau,
        energy_rank_exact=True,
        method="full_svd",
        high_rank=k_tau > limit,
        bound=bound,
        steps=0,
    )
