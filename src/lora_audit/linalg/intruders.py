"""Intruder dimensions: top singular directions of ``W + ΔW`` that ``W`` has no counterpart for.

Pure math on dense float64 torch tensors (no files, no CLI), so that a LoRA audit
(``ΔW = s·B·A``, or DoRA's effective update) and a full fine-tune audit
(``ΔW = W_tuned − W_base``) share it.

Definition (Shuttleworth et al., 2025, §3; PEFT's ``peft/tuners/lora/intruders.py``,
``_calc_intruder_ids``): with the thin SVDs ``W = U Σ Vᵀ`` and ``W + ΔW = U′ Σ′ V′ᵀ``
(``full_matrices=False``: ``p = min(out, in)`` columns each, in the ``(out, in)`` orientation
of ``ΔW``), the *i*-th left singular vector ``u′ᵢ`` of the fine-tuned weight is an intruder
dimension when its best absolute cosine with every left singular vector of ``W``,

    ``cᵢ = max_j |⟨u′ᵢ, u_j⟩|``, ``j = 1 … p``,

is below ``ε``, for ``i = 1 … top`` (PEFT's defaults: ``top = 10``, ``ε = 0.5``). The
maximum runs over *all* ``p`` of ``W``'s singular vectors, not only its top ones, so ``W``'s
full thin left basis is needed: one LAPACK SVD of ``W`` (which the caller may cache, since
it depends on ``W`` alone) and one of ``W + ΔW``.

No shortcut is taken. A truncated basis of ``W`` could only *lower* ``cᵢ`` (the maximum runs
over fewer terms), so it would report intruders that are not; and an iterative ``u′ᵢ``
moves ``cᵢ`` by up to the sine of its error angle, which near a cluster of singular values is
not bounded by anything computable from the iteration alone. The dense SVDs are exact up to
float64 rounding: ``cᵢ`` is within about ``1e-12`` of its exact value unless ``σ′ᵢ`` is
(nearly) repeated, in which case ``u′ᵢ`` itself is not defined, or ``u′ᵢ`` leans on a repeated
singular value of ``W``, whose vectors are any basis of their subspace — as for PEFT.

The energy an intruder carries is its share of the fine-tuned weight's energy,
``σ′ᵢ² / ‖W + ΔW‖_F²`` (summed over the intruders).

References
----------
R. Shuttleworth, J. Andreas, A. Torralba and P. Sharma, "LoRA vs full fine-tuning: an illusion
of equivalence", NeurIPS 2025 (arXiv:2410.21228).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: PEFT's defaults (``reduce_intruder_dimension(top_k=10, threshold_epsilon=0.5)``).
DEFAULT_TOP = 10
DEFAULT_EPSILON = 0.5


@dataclass(frozen=True, kw_only=True)
class Intruders:
    """The intruder dimensions of one layer.

    Attributes
    ----------
    top
        How many top singular vectors of ``W + ΔW`` were examined (``min(top, out, in)``).
    epsilon
        The cosine threshold ``ε``.
    indices
        0-based positions (in descending ``σ′``) of the intruders among the top ones.
    similarities
        ``cᵢ`` for each examined vector: its best ``|cos|`` with any left singular vector of ``W``.
    sigma
        ``σ′₁ … σ′_top`` of ``W + ΔW``.
    energy
        ``Σ_{i ∈ indices} σ′ᵢ² / ‖W + ΔW‖_F²`` (0 without intruders).
    """

    top: int
    epsilon: float
    indices: tuple[int, ...]
    similarities: tuple[float, ...]
    sigma: tuple[float, ...]
    energy: float

    @property
    def count(self) -> int:
        """The number of intruder dimensions."""
        return len(self.indices)


def check_intruder_options(top: int, epsilon: float) -> str | None:
    """What is wrong with ``top`` and ``epsilon``, or ``None``: ``top ≥ 1``, ``0 < ε ≤ 1``."""
    if top < 1:
        return f"the number of top singular vectors examined must be at least 1, not {top}"
    if not 0 < epsilon <= 1:
        return f"the cosine threshold must be in (0, 1], not {epsilon:g}"
    return None


def left_basis(w: torch.Tensor) -> torch.Tensor:
    """``W``'s thin left singular basis ``U``, shape ``(out, min(out, in))``, descending ``σ``.

    One LAPACK (or cuSOLVER) SVD in ``w``'s dtype and device; ``O(out·in·min(out, in))``.
    """
    import torch

    u: torch.Tensor = torch.linalg.svd(w, full_matrices=False).U
    return u


def intruder_dimensions(
    w: torch.Tensor,
    delta: torch.Tensor,
    *,
    top: int = DEFAULT_TOP,
    epsilon: float = DEFAULT_EPSILON,
    basis: torch.Tensor | None = None,
) -> Intruders:
    """Intruder dimensions of ``W + ΔW`` against ``W`` (see the module docstring).

    Parameters
    ----------
    w, delta : torch.Tensor of shape (out, in)
        The pretrained weight and the update, float64, on one device.
    top
        The number of top singular vectors of ``W + ΔW`` examined (clipped to ``min(out, in)``).
    epsilon
        A vector is an intruder when its best ``|cos|`` with ``W``'s singular vectors is ``< ε``.
    basis : torch.Tensor of shape (out, min(out, in)), optional
        ``left_basis(w)``, when the caller has it already (a cache).

    Returns
    -------
    Intruders

    Raises
    ------
    ValueError
        For shapes that differ, a ``basis`` of the wrong shape, or options that
        :func:`check_intruder_options` rejects.
    """
    import torch

    problem = check_intruder_options(top, epsilon)
    if problem is not None:
        raise ValueError(problem)
    if w.shape != delta.shape or w.ndim != 2:
        raise ValueError(f"W {tuple(w.shape)} and ΔW {tuple(delta.shape)} must be equal 2-D shapes")
    out, inp = w.shape
    p = min(out, inp)
    if basis is None:
        basis = left_basis(w)
    if tuple(basis.shape) != (out, p):
        raise ValueError(f"the basis of W has shape {tuple(basis.shape)}, expected {(out, p)}")
    merged = w + delta
    u_m, s_m, _ = torch.linalg.svd(merged, full_matrices=False)
    k = min(top, p)
    best = (u_m[:, :k].mT @ basis.to(u_m)).abs().amax(dim=1)
    similarities = tuple(float(c) for c in best)
    indices = tuple(i for i, c in enumerate(similarities) if c < epsilon)
    total = float((s_m * s_m).sum())
    carried = sum(float(s_m[i]) ** 2 for i in indices)
    return Intruders(
        top=k,
        epsilon=epsilon,
        indices=indices,
        similarities=similarities,
        sigma=tuple(float(s) for s in s_m[:k]),
        energy=carried / total if total > 0 else 0.0,
    )
