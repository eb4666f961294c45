"""Dense float64 references for the base-aware metrics (LAPACK SVDs, scipy's subspace angles)."""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

EXACT = 1e-10


def planted(out: int, inp: int, spectrum: np.ndarray, seed: int) -> np.ndarray:
    """A dense ``(out, inp)`` matrix with the given singular values (zero-padded)."""
    rng = np.random.default_rng(seed)
    k = min(out, inp)
    u, _ = np.linalg.qr(rng.standard_normal((out, k)))
    v, _ = np.linalg.qr(rng.standard_normal((inp, k)))
    s = np.zeros(k)
    s[: len(spectrum)] = spectrum[:k]
    return (u * s) @ v.T


def pretrained_like(out: int, inp: int, seed: int) -> np.ndarray:
    """Slowly decaying spectrum with a few separated top values, like trained weights."""
    k = min(out, inp)
    spectrum = np.concatenate([[9.0, 7.0, 5.5, 4.5, 3.8], 3.0 * 0.97 ** np.arange(k - 5)])
    return planted(out, inp, spectrum, seed)


def factors(out: int, inp: int, r: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    return rng.standard_normal((out, r)) * 0.3, rng.standard_normal((r, inp)) * 0.3


def dense_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD of a dense float64 matrix by LAPACK (gesdd).

    Called through torch rather than numpy: numpy's OpenBLAS threads and torch's OpenMP
    threads in one process can slow each other down by two orders of magnitude on a busy
    machine. The reference stays independent of the code under test.
    """
    u, s, vh = torch.linalg.svd(torch.from_numpy(np.ascontiguousarray(x)), full_matrices=False)
    return u.numpy(), s.numpy(), vh.numpy()


def dense_reference(w: np.ndarray, delta: np.ndarray, k: int) -> dict[str, object]:
    """Every base-aware number from dense float64 SVDs."""
    merged = w + delta
    u, s, vt = dense_svd(w)
    ud, sd, vdt = dense_svd(delta)
    sm = dense_svd(merged)[1]
    fw, fd, fm = (np.linalg.norm(x) for x in (w, delta, merged))
    uk, vk = u[:, :k], vt[:k].T
    udk, vdk = ud[:, :k], vdt[:k].T
    left = np.degrees(scipy.linalg.subspace_angles(uk, udk))[::-1]
    right = np.degrees(scipy.linalg.subspace_angles(vk, vdk))[::-1]
    cos2 = np.cos(np.radians(left)) ** 2
    cos2r = np.cos(np.radians(right)) ** 2
    return {
        "weight_frobenius_norm": fw,
        "weight_spectral_norm": s[0],
        "weight_stable_rank": fw**2 / s[0] ** 2,
        "merged_frobenius_norm": fm,
        "merged_spectral_norm": sm[0],
        "merged_stable_rank": fm**2 / sm[0] ** 2,
        "stable_rank_change": fm**2 / sm[0] ** 2 - fw**2 / s[0] ** 2,
        "update_frobenius_norm": fd,
        "update_spectral_norm": sd[0],
        "relative_frobenius": fd / fw,
        "relative_spectral": sd[0] / s[0],
        "top_k_alignment": np.linalg.norm(uk.T @ delta @ vk) / fd,
        "amplification": fd / np.linalg.norm(udk.T @ w @ vdk),
        "left_angles": left,
        "right_angles": right,
        "subspace_overlap": (cos2.sum() + cos2r.sum()) / (2 * k),
        "energy": sd**2 / fd**2,
    }


def check(m: object, ref: dict[str, object], *, tol: float) -> None:
    """Exact fields to 1e-10; iterative ones within the stated tolerance of the report."""
    iterative = set(m.iterative)  # type: ignore[attr-defined]
    sub = 5 * m.subspace_error + 1e-9  # type: ignore[attr-defined]
    for name, want in ref.items():
        if name == "energy":
            continue
        got = getattr(m, name)
        if name in ("left_angles", "right_angles"):
            # an angle error of δ radians moves cos² by at most 2δ; compare in degrees
            assert np.allclose(got, want, atol=math.degrees(sub) + 1e-6), name
            continue
        scale = max(abs(float(want)), 1e-300)
        if name not in iterative:
            bound = EXACT
        elif name in ("weight_spectral_norm", "merged_spectral_norm", "update_spectral_norm"):
            bound = tol
        elif name.endswith("stable_rank") or name in ("stable_rank_change", "relative_spectral"):
            bound = 3 * tol  # a ratio of an exact square and a squared σ₁
        else:
            bound = sub
        if name == "stable_rank_change":
            scale = max(scale, float(ref["weight_stable_rank"]))  # type: ignore[arg-type]
        assert abs(got - float(want)) <= bound * scale, (name, got, want, bound)
