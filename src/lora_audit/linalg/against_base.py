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

if TYPE_CHECKING:
    import torch

#: Default relative residual tolerance of the iterative triplets.
TOLERANCE = 1e-8
#: Rayleigh–Ritz (an ``m×m`` eigenproblem) runs each time the basis has grown by this factor,
#: so that its cost stays a fixed multiple of the last one's instead of growing with the steps.
CHECK_GROWTH = 1.25

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


def dora_scale(
    terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor], magnitude: torch.Tensor
) -> torch.Tensor:
    """DoRA's row factors ``cᵢ = mᵢ / ‖Wᵢ + (BA)ᵢ‖``, shape (n, out); 0 for a zero row."""
    import torch

    w2, cross, z2 = terms
    norm = (w2 + 2 * cross + z2).clamp_min(0).sqrt()
    return torch.where(norm > 0, magnitude / norm.clamp_min(1e-300), torch.zeros_like(norm))


def principal_angles(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spaces of ``x`` and ``y``.

    Parameters
    ----------
    x, y : torch.Tensor of shape (d, k)
        Orthonormal columns.

    Returns
    -------
    torch.Tensor of shape (k,)
        As :func:`scipy.linalg.subspace_angles` (reversed): ``arccos`` of the singular values
        of ``xᵀy`` for large angles, ``arcsin`` of those of ``y − x(xᵀy)`` for small ones, so
        that both ends are accurate to about ``ε``.
    """
    import torch

    inner = x.mT @ y
    cos = torch.linalg.svdvals(inner).clamp(0, 1)  # descending
    sin = torch.linalg.svdvals(y - x @ inner).clamp(0, 1).flip(-1)  # ascending
    return torch.where(cos * cos >= 0.5, torch.arcsin(sin), torch.arccos(cos))


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
            theta_l = principal_angles(u_k, ud_k)
            theta_r = principal_angles(v_k, vd_k)
            cos2 = float((theta_l.cos() ** 2).sum() + (theta_r.cos() ** 2).sum())
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
