"""llama.cpp GGUF LoRA adapters, written as ``convert_lora_to_gguf.py`` writes them.

The files are made with the ``gguf`` package's ``GGUFWriter`` and ``gguf.quants.quantize``
exactly as the converter does (``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha`` as float32, ``<base tensor>.lora_a`` (r, in) / ``.lora_b`` (out, r),
Q8_0 falling back to F16 for rows that are not whole blocks, MoE experts stacked, the
``token_embd`` ``lora_a`` transposed). The reference is the dense float64 update llama.cpp
applies (``build_lora_mm``: ``scale = alpha / lora_b.ne[0]``), from tensors decoded here
independently of the reader (Q8_0 and BF16 decoded by hand).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from lora_audit.engine.device import EngineOptions  # noqa: E402
from lora_audit.engine.spectra import analyse  # noqa: E402
from lora_audit.errors import InputError  # noqa: E402
from lora_audit.formats import load_adapter  # noqa: E402

RTOL = 1e-6
QTYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}


def _encode(data: np.ndarray, outtype: str) -> tuple[np.ndarray, Any]:
    """What the converter stores for one tensor: its type and its quantised data."""
    qtype = QTYPES[outtype]
    try:
        return gguf.quants.quantize(data.astype(np.float32), qtype), qtype
    except gguf.QuantError:  # the converter's fallback
        qtype = gguf.GGMLQuantizationType.F16
        return gguf.quants.quantize(data.astype(np.float32), qtype), qtype


def write_gguf(
    path: Path,
    tensors: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    alpha: float | None,
    outtype: str = "f32",
    general_type: str = "adapter",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``{base tensor name: (lora_a, lora_b)}``; return the decoded stored factors."""
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_type(general_type)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    if alpha is not None:
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    stored = {}
    for name, (a, b) in tensors.items():
        pair = []
        for suffix, t in (("lora_a", a), ("lora_b", b)):
            data, qtype = _encode(t, outtype)
            writer.add_tensor(f"{name}.{suffix}", data, raw_dtype=qtype)
            pair.append(_decode(data, qtype, t.shape))
        stored[name] = (pair[0], pair[1])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def _decode(data: np.ndarray, qtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Float64 values of stored data, decoded by hand (not with gguf.quants)."""
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return np.asarray(data, dtype=np.float64).reshape(shape)
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if qtype == gguf.GGMLQuantizationType.BF16:
        bits = raw.view("<u2").astype("<u4") << 16
        return bits.view("<f4").astype(np.float64).reshape(shape)
    assert qtype == gguf.GGMLQuantizationType.Q8_0  # blocks: f16 scale, 32 × int8
    blocks = raw.reshape(-1, 34)
    d = blocks[:, :2].copy().view("<f2").astype(np.float64)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float64)
    return (d * q).reshape(shape)


def _factors(rng: np.random.Generator, out: int, inp: int, r: int) -> tuple[np.ndarray, ...]:
    return rng.standard_normal((r, inp)) * 0.1, rng.standard_normal((out, r)) * 0.1


def _sv(m: np.ndarray, k: int) -> np.ndarray:
    return np.linalg.svd(m, compute_uv=False)[:k]


def _sigmas(path: Path, **kw: Any) -> tuple[Any, dict[str, np.ndarray]]:
    adapter = load_adapter(path, **kw)
    return adapter, analyse(adapter, options=EngineOptions(device="cpu")).sigmas


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_linear_layers_match_llama_cpp(tmp_path: Path, outtype: str) -> None:
    rng = np.random.default_rng(1)
    tensors = {
        "blk.0.attn_q.weight": _factors(rng, 64, 64, 8),
        "blk.0.attn_k.weight": _factors(rng, 32, 64, 8),
        "blk.1.ffn_down.weight": _factors(rng, 64, 96, 8),
    }
    stored = write_gguf(tmp_path / "a.gguf", tensors, alpha=16.0, outtype=outtype)
    adapter, sigmas = _sigmas(tmp_path / "a.gguf")
    assert adapter.format == "gguf" and adapter.warnings == ()
    assert {x.scale_source for x in adapter.layers} == {"metadata"}
    by_name = {x.name: x for x in adapter.layers}
    for name, (a, b) in stored.items():
        layer = by_name[name.removesuffix(".weight")]
        assert layer.scale == 16.0 / 8
        exact = (16.0 / 8) * b @ a  # llama.cpp: scale · B · (A · x)
        np.testing.assert_allclose(sigmas[layer.name], _sv(exact, 8), rtol=RTOL)
        assert (layer.out_features, layer.in_features) == exact.shape
    if outtype == "q8_0":  # A rows are whole blocks: Q8_0; B rows (r = 8) fell back to F16
        assert {x.dtype for x in adapter.layers} == {"F16/Q8_0"}


def test_stacked_experts_are_one_layer_each(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 4, 32)) * 0.1  # (E, r, in)
    b = rng.standard_normal((3, 48, 4)) * 0.1  # (E, out, r)
    stored = write_gguf(tmp_path / "moe.gguf", {"blk.0.ffn_up_exps.weight": (a, b)}, alpha=8.0)
    adapter, sigmas = _sigmas(tmp_path / "moe.gguf")
    sa, sb = stored["blk.0.ffn_up_exps.weight"]
    assert [x.name for x in adapter.layers] == [f"blk.0.ffn_up_exps[{e}]" for e in range(3)]
    for e in range(3):
        exact = (8.0 / 4) * sb[e] @ sa[e]
        np.testing.assert_allclose(sigmas[f"blk.0.ffn_up_exps[{e}]"], _sv(exact, 4), rtol=RTOL)


def test_token_embedding_orientation(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    emb_a = rng.standard_normal((3, 100)) * 0.1  # PEFT lora_embedding_A (r, vocab)
    emb_b = rng.standard_normal((48, 3)) * 0.1  # PEFT lora_embedding_B (dim, r)
    # convert_lora_to_gguf.py: token_embd's lora_a is transposed -> (vocab, r)
    stored = write_gguf(tmp_path / "e.gguf", {"token_embd.weight": (emb_a.T, emb_b)}, alpha=6.0)
    adapter, sigmas = _sigmas(tmp_path / "e.gguf")
    (layer,) = adapter.layers
    assert layer.kind.value == "embedding" and layer.weight_shape == (100, 48)
    sa, sb = stored["token_embd.weight"]
    exact = (6.0 / 3) * sa @ sb.T  # llm_build_inp_embd: rows of A times Bᵀ, (vocab, dim)
    np.testing.assert_allclose(sigmas["token_embd"], _sv(exact, 3), rtol=RTOL)


def test_missing_alpha_is_scale_one_with_a_warning(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    write_gguf(tmp_path / "n.gguf", {"blk.0.attn_v.weight": _factors(rng, 32, 32, 4)}, alpha=None)
    adapter = load_adapter(tmp_path / "n.gguf")
    assert [(x.scale, x.scale_source) for x in adapter.layers] == [(1.0, "assumed")]
    assert "adapter.lora.alpha is missing" in adapter.warnings[0]
    assert "scale 1" in adapter.warnings[0]
    option = load_adapter(tmp_path / "n.gguf", alpha=8.0)
    assert [(x.scale, x.scale_source) for x in option.layers] == [(2.0, "option")]


def test_gguf_model_and_broken_pairs_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    pair = {"blk.0.attn_q.weight": _factors(rng, 32, 32, 4)}
    write_gguf(tmp_path / "m.gguf", pair, alpha=8.0, general_type="model")
    with pytest.raises(InputError, match=r"a GGUF model file .* not a LoRA adapter"):
        load_adapter(tmp_path / "m.gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "half.gguf"), arch="llama")
    writer.add_type("adapter")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.ones((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InputError, match="missing one component"):
        load_adapter(tmp_path / "half.gguf")


def test_without_the_gguf_package_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(6)
    write_gguf(tmp_path / "a.gguf", {"blk.0.attn_q.weight": _factors(rng, 32, 32, 4)}, alpha=8.0)
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(InputError) as info:
        load_adapter(tmp_path / "a.gguf")
    assert "GGUF" in str(info.value) and "pip install gguf" in str(info.value)
    assert "safetensors" not in str(info.value)


def test_compress_refuses_gguf_and_says_what_to_do(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lora_audit.cli import app

    rng = np.random.default_rng(7)
    write_gguf(tmp_path / "a.gguf", {"blk.0.attn_q.weight": _factors(rng, 32, 32, 4)}, alpha=8.0)
    out = tmp_path / "out.gguf"
    args = ["compress", str(tmp_path / "a.gguf"), "-o", str(out), "--rank", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "does not write GGUF" in result.output
    assert "convert_lora_to_gguf.py" in result.output
    assert not out.exists()
    inspected = CliRunner().invoke(app, ["inspect", str(tmp_path / "a.gguf"), "-f", "json"])
    assert inspected.exit_code == 0, inspected.output
    assert json.loads(inspected.stdout)["adapter"]["format"] == "gguf"
