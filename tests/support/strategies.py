"""Hypothesis strategies and dense references shared by the numerics tests."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st


def dense_reference(b: torch.Tensor, a: torch.Tensor) -> np.ndarray:
    """σ of each B[i] @ A[i], from numpy's dense float64 SVD, zero-padded to r."""
    r = b.shape[2]
    out = np.zeros((b.shape[0], r))
    for i in range(b.shape[0]):
        s = np.linalg.svd(b[i].double().numpy() @ a[i].double().numpy(), compute_uv=False)
        out[i, : min(r, s.size)] = s[:r]
    return out


@st.composite
def factors(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    n = draw(st.integers(1, 3))
    out = draw(st.integers(1, 40))
    inp = draw(st.integers(1, 40))
    r = draw(st.integers(1, 24))  # may exceed min(out, in)
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(n, out, r, generator=gen, dtype=torch.float64)
    a = torch.randn(n, r, inp, generator=gen, dtype=torch.float64)
    case = draw(st.sampled_from(["plain", "zero_b", "zero_a", "low_rank", "decay", "tiny", "huge"]))
    if case == "zero_b":
        b[0] = 0
    elif case == "zero_a":
        a[-1] = 0
    elif case == "low_rank" and r > 1:
        keep = draw(st.integers(1, r - 1))
        b[:, :, keep:] = 0
    elif case == "decay":
        a = a * torch.logspace(0, -6, r, dtype=torch.float64).reshape(1, r, 1)
    elif case == "tiny":
        b, a = b * 1e-20, a * 1e-15
    elif case == "huge":
        b, a = b * 1e15, a * 1e10
    # round to the storage dtype, as a file would hold them, then compute in float64
    b = b.to(dtype).to(torch.float64) if case not in {"tiny", "huge"} else b
    a = a.to(dtype).to(torch.float64) if case not in {"tiny", "huge"} else a
    return b, a
