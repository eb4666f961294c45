"""Scalar summaries of a singular spectrum (pure numpy; no tensors, no I/O).

For singular values ``σ₁ ≥ … ≥ σ_r ≥ 0`` of ``ΔW``:

* Frobenius norm ``‖ΔW‖_F = √Σσᵢ²``; spectral norm ``‖ΔW‖₂ = σ₁``.
* Stable rank ``‖ΔW‖_F² / ‖ΔW‖₂² = Σσᵢ² / σ₁²`` (1 ≤ sr ≤ rank; 0 for ΔW = 0).
* Effective rank ``exp(H(p))`` with ``pᵢ = σᵢ² / Σσⱼ²`` (the entropy of the normalised energy
  distribution; Roy & Vetterli, 2007, define it with ``pᵢ = σᵢ / Σσⱼ``; the energy form is
  used here so that it agrees with the energy ranks below). 0 for ΔW = 0.
* Cumulative energy ``C(k) = Σ_{i≤k} σᵢ² / Σσᵢ²`` for k = 1…r.
* Energy rank at τ: the smallest k with ``C(k) ≥ τ`` (0 for ΔW = 0). By Eckart–Young, the
  best rank-k approximation keeps exactly ``C(k)`` of the energy and has relative Frobenius
  error ``√(1 − C(k))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Slack for rounding when comparing C(k) with τ, relative to the total energy.
ENERGY_SLACK = 1e-12


@dataclass(frozen=True, kw_only=True)
class SpectrumSummary:
    """Metrics of one spectrum. Sequences are tuples of Python floats, length ``rank``."""

    singular_values: tuple[float, ...]
    frobenius_norm: float
    spectral_norm: float
    stable_rank: float
    effective_rank: float
    energy: tuple[float, ...]
    energy_rank: int


def _relative_squares(sigma: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``(σᵢ/σ₁)²``: scale-free, so neither tiny nor huge spectra under- or overflow."""
    sigma = np.asarray(sigma, dtype=np.float64)
    top = float(sigma.max(initial=0.0))
    if top == 0.0:
        return np.zeros_like(sigma)
    return np.square(sigma / top)


def cumulative_energy(sigma: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``C(k)`` for k = 1…len(sigma); all zeros when ``sigma`` is all zero."""
    squares = _relative_squares(sigma)
    total = float(squares.sum())
    if total == 0.0:
        return squares
    return np.minimum(np.cumsum(squares) / total, 1.0)


def energy_rank(sigma: npt.NDArray[np.float64], energy: float) -> int:
    """The smallest k with ``C(k) ≥ energy``; 0 when ``sigma`` is all zero or energy ≤ 0."""
    squares = _relative_squares(sigma)
    total = float(squares.sum())
    if total == 0.0 or energy <= 0:
        return 0
    target = energy * total * (1.0 - ENERGY_SLACK)
    k = int(np.searchsorted(np.cumsum(squares), target, side="left")) + 1
    return min(k, int(squares.size))


def summarize(sigma: npt.NDArray[np.float64], *, energy: float) -> SpectrumSummary:
    """All metrics of one descending spectrum ``sigma`` of shape (r,)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    squares = _relative_squares(sigma)
    total = float(squares.sum())  # ‖ΔW‖_F² / σ₁², i.e. the stable rank
    top = float(sigma.max(initial=0.0))
    if total > 0.0:
        p = squares / total
        nz = p[p > 0]
        effective = math.exp(float(-(nz * np.log(nz)).sum()))
        stable = total
    else:
        effective = stable = 0.0
    return SpectrumSummary(
        singular_values=tuple(float(s) for s in sigma),
        frobenius_norm=top * math.sqrt(total),
        spectral_norm=top,
        stable_rank=stable,
        effective_rank=effective,
        energy=tuple(float(c) for c in cumulative_energy(sigma)),
        energy_rank=energy_rank(sigma, energy),
    )
