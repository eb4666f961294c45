"""Pure math for ``merge``: a weighted sum of thin products is one thin product.

For layers ``ΔWᵢ = sᵢ·Bᵢ·Aᵢ`` (``Bᵢ`` of shape (out, rᵢ), ``Aᵢ`` of shape (rᵢ, in)) and weights
``wᵢ``, with ``cᵢ = wᵢ·sᵢ``::

    Σᵢ cᵢ·Bᵢ·Aᵢ = [c₁B₁ | c₂B₂ | …] · [A₁; A₂; …]

a product of inner dimension ``R = Σ rᵢ``, so its singular values and its best rank-k
truncation come from the factored engine (:mod:`lora_audit.linalg.spectral`) with no dense
``ΔW``. Each coefficient is split evenly between the two blocks
(:func:`~lora_audit.linalg.truncation.split_scale`:
``√|c|`` on ``Aᵢ``, ``sign(c)·√|c|`` on ``Bᵢ``) so that the blocks keep the balance the
factors had, which is what the Gram method's error bound ``√ε·‖B‖₂·‖A‖₂`` rewards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lora_audit.linalg.spectral import Float64Array
from lora_audit.linalg.truncation import split_scale


def stack_factors(
    pairs: Sequence[tuple[Float64Array, Float64Array]], *, coefficients: Sequence[float]
) -> tuple[Float64Array, Float64Array]:
    """The thin factors of ``Σᵢ cᵢ·Bᵢ·Aᵢ``.

    Parameters
    ----------
    pairs
        ``(Bᵢ, Aᵢ)``: ``Bᵢ`` of shape (out, rᵢ) and ``Aᵢ`` of shape (rᵢ, in), float64, the
        same ``out`` and ``in`` for all.
    coefficients
        ``cᵢ`` (weight times scale), finite, one per pair.

    Returns
    -------
    b : ndarray of shape (out, Σrᵢ), float64
    a : ndarray of shape (Σrᵢ, in), float64
        New arrays, C-contiguous, with ``b @ a = Σᵢ cᵢ·Bᵢ·Aᵢ`` (to rounding: each block is
        multiplied by ``√|cᵢ|`` once).

    Raises
    ------
    ValueError
        When there are no pairs, the counts differ or the outer shapes disagree.
    """
    if not pairs or len(pairs) != len(coefficients):
        raise ValueError(f"{len(pairs)} factor pairs for {len(coefficients)} coefficients")
    out, inp = pairs[0][0].shape[0], pairs[0][1].shape[1]
    total = 0
    for b_i, a_i in pairs:
        if b_i.shape[0] != out or a_i.shape[1] != inp or b_i.shape[1] != a_i.shape[0]:
            raise ValueError(
                f"factors {b_i.shape} · {a_i.shape} do not make a ({out}, {inp}) product"
            )
        total += b_i.shape[1]
    b = np.empty((out, total), dtype=np.float64)
    a = np.empty((total, inp), dtype=np.float64)
    start = 0
    for (b_i, a_i), c in zip(pairs, coefficients, strict=True):
        to_b, to_a = split_scale(float(c))
        stop = start + b_i.shape[1]
        np.multiply(b_i, to_b, out=b[:, start:stop])
        np.multiply(a_i, to_a, out=a[start:stop])
        start = stop
    return b, a
