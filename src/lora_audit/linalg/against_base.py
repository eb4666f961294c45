"""Base-aware metrics: how an update ``ΔW`` sits against the pretrained weight ``W``.

Pure math on torch tensors (no files, no CLI). Every matrix is in ``ΔW``'s orientation,
``(out, in)``, float64, and batched over ``n`` layers of equal shape; ``B`` carries the
layer scale (``B = s·B_stored``) so that ``ΔW = B·A``.

Operators
---------
Every matrix the audit looks at has the form ``M = diag(p)·W + diag(q)·B·A`` and is applied
to a block ``X`` as ``p ⊙ (W X) + q ⊙ (B (A X))``, so ``B·A`` is never formed:

==========================  ===================  =========================================
matrix                      ``p``                ``q``
==========================  ===================  =========================================
``W``                       1                    0
``W + ΔW`` (LoRA)           1                    1
``W′`` (DoRA's weight)      ``c``                ``c``, ``cᵢ = mᵢ / ‖Wᵢ + (BA)ᵢ‖``
``ΔW_eff = W′ − W`` (DoRA)  ``c − 1``            ``c``
==========================  ===================  =========================================

(``mᵢ`` is DoRA's magnitude of output row ``i``; PEFT normalises each output row of the
``(out, in)`` weight, ``torch.linalg.norm(W + sBA, dim=1)``.)

Exact quantities (up to float64 rounding)
-----------------------------------------
With the row terms ``‖Wᵢ‖²``, ``⟨Wᵢ, (BA)ᵢ⟩ = Σₗ Bᵢₗ (W Aᵀ)ᵢₗ`` and
``‖(BA)ᵢ‖² = Bᵢ (A Aᵀ) Bᵢᵀ`` (``O(out·in·r)`` work),
``‖M‖_F² = Σᵢ pᵢ²‖Wᵢ‖² + 2 pᵢ qᵢ ⟨Wᵢ, (BA)ᵢ⟩ + qᵢ²‖(BA)ᵢ‖²``: so ``‖W‖_F``, ``‖ΔW‖_F``,
``‖W + ΔW‖_F`` (the cross term ``2⟨W, ΔW⟩`` included) and DoRA's row norms are exact, with
an absolute rounding error of order ``ε·(‖W‖_F + ‖ΔW‖_F)²`` on the squares. For a LoRA layer,
``ΔW``'s singular triplets come exactly from its factors (:func:`lora_audit.linalg.spectral.svd`).

Iterative quantities
--------------------
The top singular triplets of ``W``, of ``W + ΔW`` and of DoRA's ``ΔW_eff`` come from a
randomized block Krylov method (:func:`top_triplets`; Musco & Musco, 2015; Halko, Martinsson
& Tropp, 2011, §4): a Gaussian start block of ``k + oversample`` vectors (seeded, so results
are reproducible), the Krylov space ``span{MΩ, (MMᵀ)MΩ, …}`` kept orthonormal by block
Gram–Schmidt applied twice, and a Rayleigh–Ritz step ``Q Qᵀ M`` after each block. It stops
when every wanted Ritz triplet ``(σ̃ᵢ, uᵢ, vᵢ)`` has a residual ``ρᵢ = ‖M vᵢ − σ̃ᵢ uᵢ‖ ≤
tol·σ̃₁`` (``Mᵀuᵢ = σ̃ᵢ vᵢ`` holds by construction), or when the space is the whole range
(then the result is exact). Guarantees:

* each Ritz value is a lower bound, ``σ̃ᵢ ≤ σᵢ`` (interlacing), and some singular value of
  ``M`` lies within ``ρᵢ`` of ``σ̃ᵢ``; so ``σ₁`` is found to a relative error ``≤ tol``
  (1e-8 by default) unless the random start block is orthogonal to its singular vector, an
  event of probability zero (the error is in practice ``≈ ρ²/gap``, far below ``tol``);
* the computed top-``k`` subspaces are within an angle of about
  ``subspace_error = maxᵢ ρᵢ / (σ̃ₖ − σ̃ₖ₊₁)`` of the exact ones (Wedin's theorem, with the
  gap estimated from the Ritz values); the alignment numbers inherit an error of a few times
  that. It is reported per layer: a subspace whose gap is tiny is ill-defined whatever the
  method, and the number says so.

References
----------
C. Musco and C. Musco, "Randomized block Krylov methods for stronger and faster approximate
singular value decomposition", NeurIPS 2015. N. Halko, P.-G. Martinsson and J. A. Tropp,
"Finding structure with randomness", SIAM Review 53(2), 2011. P.-Å. Wedin, "Perturbation
bounds in connection with singular value decomposition", BIT 12, 1972. E. J. Hu et al.,
"LoRA: Low-rank adaptation of large language models", ICLR 2022, §7.3 (amplification).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from lora_audit.linalg.dora import dora_scale
from lora_audit.linalg.krylov import KrylovOptions, Triplets, top_triplets
from lora_audit.linalg.operators import Operator, frobenius_squared, row_terms
from lora_audit.linalg.subspaces import principal_angles

if TYPE_CHECKING:
    import torch


#: Fields of :class:`BaseMetrics` that are always exact (up to rounding).
EXACT_FIELDS = (
    "weight_frobenius_norm",
    "merged_frobenius_norm",
    "update_frobenius_norm",
    "relative_frobenius",
)
#: Fields that depend on iterative triplets of ``W`` or ``W + ΔW``.
ITERATIVE_FIELDS = (
    "weight_spectral_norm",
    "weight_stable_rank",
    "merged_spectral_norm",
    "merged_stable_rank",
    "stable_rank_change",
    "relative_spectral",
    "top_k_alignment",
    "left_angles",
    "right_angles",
    "subspace_overlap",
)
#: Fields exact for LoRA (from the factors) and iterative for DoRA's effective update.
UPDATE_FIELDS = ("update_spectral_norm", "amplification", "update_energy_at_rank")


def _host(x: torch.Tensor) -> npt.NDArray[np.float64]:
    """A float64 numpy copy of a (small) device tensor, for the host-side subspace math."""
    return np.ascontiguousarray(x.detach().cpu().double().numpy())


@dataclass(frozen=True, kw_only=True)
class BaseMetrics:
    """How one layer's update relates to its pretrained weight (see the report's docs).

    ``ΔW`` is ``s·B·A`` for LoRA and ``W′ − W`` (DoRA's effective update) for DoRA. Angles are
    in degrees, ascending. ``nan`` marks a quantity that is undefined (a zero ``ΔW``).
    ``random_alignment = k/√(out·in)`` and ``random_overlap = (k/out + k/in)/2`` are what
    ``top_k_alignment`` and ``subspace_overlap`` would be (in root mean square and mean) for
    an update whose singular directions were drawn at random.
    """

    k: int
    dora: bool
    weight_frobenius_norm: float
    weight_spectral_norm: float
    weight_stable_rank: float
    merged_frobenius_norm: float
    merged_spectral_norm: float
    merged_stable_rank: float
    stable_rank_change: float
    update_frobenius_norm: float
    update_spectral_norm: float
    relative_frobenius: float
    relative_spectral: float
    top_k_alignment: float
    amplification: float
    left_angles: tuple[float, ...]
    right_angles: tuple[float, ...]
    subspace_overlap: float
    update_energy_at_rank: float | None
    residual: float
    subspace_error: float
    converged: bool
    iterative: tuple[str, ...]
    random_alignment: float
    random_overlap: float


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


def base_metrics(
    w: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    *,
    scales: Sequence[float],
    ks: Sequence[int],
    magnitude: torch.Tensor | None = None,
    options: KrylovOptions | None = None,
) -> list[BaseMetrics]:
    """Base-aware metrics of a batch of equal-shape layers.

    Parameters
    ----------
    w : torch.Tensor of shape (n, out, in)
        Pretrained weights in ``ΔW``'s orientation, float64.
    b : torch.Tensor of shape (n, out, r)
        ``B`` as stored (unscaled), float64, same device.
    a : torch.Tensor of shape (n, r, in)
    scales
        The ``n`` layer scales ``s``.
    ks
        Dimension ``k ≥ 0`` of the subspaces compared, per layer (0: no alignment numbers).
    magnitude : torch.Tensor of shape (n, out), optional
        DoRA magnitudes; when given, ``ΔW`` is DoRA's effective update ``W′ − W``.
    options
        Settings of the iterative triplets (:class:`KrylovOptions`).

    Returns
    -------
    list of BaseMetrics
        One per layer. Frobenius quantities are exact; σ₁ of ``W`` and of ``W + ΔW`` are
        found to a relative error ``≤ tol``; the alignment numbers to about
        ``subspace_error``. For DoRA, ``ΔW``'s own triplets are iterative too (listed in
        ``iterative``).
    """
    import torch

    from lora_audit.linalg.spectral import svd

    options = options or KrylovOptions()
    n, out, inp = w.shape
    r = a.shape[1]
    s = torch.tensor(list(scales), dtype=w.dtype, device=w.device).reshape(-1, 1, 1)
    bs = b * s
    terms = row_terms(w, bs, a)
    dora = magnitude is not None
    if magnitude is not None:
        c = dora_scale(terms, magnitude)
        merged = Operator(w=w, b=bs, a=a, p=c, q=c)
        update = Operator(w=w, b=bs, a=a, p=c - 1, q=c)
        update_f2 = frobenius_squared(terms, c - 1, c)
        merged_f2 = frobenius_squared(terms, c, c)
    else:
        merged = Operator(w=w, b=bs, a=a)
        update = Operator(w=None, b=bs, a=a)
        update_f2 = frobenius_squared(terms, 0.0, 1.0)
        merged_f2 = frobenius_squared(terms, 1.0, 1.0)
    weight_f2 = terms[0].sum(dim=-1)
    k_max = max([1, *ks])
    top_w = top_triplets(Operator(w=w), k=k_max, options=options)
    top_m = top_triplets(merged, k=1, options=options)
    if dora:
        top_d = top_triplets(update, k=max(k_max, r), options=options)
        u_d, sigma_d, v_d = top_d.u, top_d.sigma, top_d.v
    else:
        u_d, sigma_d, vh_d = svd(bs, a)
        v_d = vh_d.mT
    results = []
    for i in range(n):
        k = min(ks[i], u_d.shape[-1], top_w.u.shape[-1])
        wf2, uf2, mf2 = (float(t[i]) for t in (weight_f2, update_f2, merged_f2))
        s_w, s_m, s_d = float(top_w.sigma[i, 0]), float(top_m.sigma[i, 0]), float(sigma_d[i, 0])
        sr_w, sr_m = _ratio(wf2, s_w * s_w), _ratio(mf2, s_m * s_m)
        nan = math.nan
        align = amp = overlap = nan
        left: tuple[float, ...] = ()
        right: tuple[float, ...] = ()
        if k >= 1 and uf2 > 0:
            u_k, v_k = top_w.u[i, :, :k], top_w.v[i, :, :k]
            proj = u_k.mT @ update.layer(i).apply(v_k.unsqueeze(0))[0]
            align = math.sqrt(float((proj * proj).sum()) / uf2)
            ud_k, vd_k = u_d[i, :, :k], v_d[i, :, :k]
            core = ud_k.mT @ (w[i] @ vd_k)
            amp = _ratio(math.sqrt(uf2), math.sqrt(float((core * core).sum())))
            theta_l = principal_angles(_host(u_k), _host(ud_k))
            theta_r = principal_angles(_host(v_k), _host(vd_k))
            cos2 = float((np.cos(theta_l) ** 2).sum() + (np.cos(theta_r) ** 2).sum())
            overlap = cos2 / (2 * k)
            left = tuple(math.degrees(float(t)) for t in theta_l)
            right = tuple(math.degrees(float(t)) for t in theta_r)
        energy_at_rank = None
        if dora:
            top_r = sigma_d[i, :r]
            energy_at_rank = min(1.0, _ratio(float((top_r * top_r).sum()), uf2)) if uf2 else 1.0
        rel = [_rel(top_w, i, k_max), _rel(top_m, i, 1)]
        sub = [float(top_w.subspace_error[i])] if k >= 1 else [0.0]
        conv = bool(top_w.converged[i]) and bool(top_m.converged[i])
        if dora:
            rel.append(_rel(top_d, i, top_d.u.shape[-1]))
            if k >= 1:
                sub.append(float(top_d.subspace_error[i]))
            conv = conv and bool(top_d.converged[i])
        iterative = ITERATIVE_FIELDS + (UPDATE_FIELDS if dora else ())
        results.append(
            BaseMetrics(
                k=k if uf2 > 0 else 0,
                dora=dora,
                weight_frobenius_norm=math.sqrt(wf2),
                weight_spectral_norm=s_w,
                weight_stable_rank=sr_w,
                merged_frobenius_norm=math.sqrt(mf2),
                merged_spectral_norm=s_m,
                merged_stable_rank=sr_m,
                stable_rank_change=sr_m - sr_w,
                update_frobenius_norm=math.sqrt(uf2),
                update_spectral_norm=s_d,
                relative_frobenius=_ratio(math.sqrt(uf2), math.sqrt(wf2)),
                relative_spectral=_ratio(s_d, s_w),
                top_k_alignment=align,
                amplification=amp,
                left_angles=left,
                right_angles=right,
                subspace_overlap=overlap,
                update_energy_at_rank=energy_at_rank,
                residual=max(rel),
                subspace_error=max(sub),
                converged=conv,
                iterative=iterative,
                random_alignment=k / math.sqrt(out * inp) if k >= 1 and uf2 > 0 else nan,
                random_overlap=(k / out + k / inp) / 2 if k >= 1 and uf2 > 0 else nan,
            )
        )
    return results


def _rel(t: Triplets, i: int, k: int) -> float:
    """Largest residual of layer ``i``'s first ``k`` triplets, relative to its σ̃₁."""
    top = float(t.sigma[i, 0])
    worst = float(t.residual[i, :k].max())
    return worst / top if top > 0 else worst
