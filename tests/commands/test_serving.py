"""The one scale of a PEFT output, zero-padding to one rank, and the per-server verdicts
(no torch: files written by the test factories, checked against float64 products)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories import FakeAdapter, FakeLayer, write_peft

from lora_audit.commands.compress import CompressOptions, compress_adapter
from lora_audit.commands.serving import check_uniform, global_scale, serving
from lora_audit.decisions.compress_ranks import RankRule
from lora_audit.errors import UsageError
from lora_audit.formats import load_adapter
from lora_audit.formats.peft_serving import padded, stored_layer
from lora_audit.formats.safetensors_io import SafetensorsSource


def _adapter(tmp_path: Path, **config: object) -> Path:
    rng = np.random.default_rng(0)
    layers = [
        FakeLayer(
            name=f"model.layers.{i}.self_attn.{p}",
            b=rng.standard_normal((24, r)).astype(np.float32),
            a=rng.standard_normal((r, 16)).astype(np.float32),
        )
        for i in range(2)
        for p, r in (("q_proj", 8), ("k_proj", 4), ("v_proj", 8))
    ]
    return write_peft(tmp_path / "in", FakeAdapter(layers=layers, config=dict(config)))


def _deltas(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    from safetensors.numpy import load_file

    tensors = load_file(str(directory / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            b = tensors[key.replace("lora_A", "lora_B")]
            out[key.removesuffix(".lora_A.weight")] = (b.astype(np.float64), a.astype(np.float64))
    return out  # type: ignore[return-value]


def test_one_scale_for_every_layer_is_what_vllm_reads(tmp_path: Path) -> None:
    """rsLoRA with patterns: after compress, lora_alpha / r (vLLM's one scale) times each
    layer's stored B·A is that layer's ΔW as PEFT's per-layer patterns scale it."""
    source = _adapter(
        tmp_path,
        r=8,
        lora_alpha=16,
        use_rslora=True,
        rank_pattern={"k_proj": 4},
        alpha_pattern={"v_proj": 32},
    )
    adapter = load_adapter(source)
    before = {
        x.name: x.scale * adapter.load_factors(x)[0] @ adapter.load_factors(x)[1]
        for x in adapter.layers
    }
    out = tmp_path / "out"
    report = compress_adapter(
        adapter, options=CompressOptions(rule=RankRule(mode="rank", value=6), output=out)
    )
    assert report.serving is not None
    config = json.loads((out / "adapter_config.json").read_text())
    vllm_scale = config["lora_alpha"] / config["r"]  # use_rslora is off
    assert config["use_rslora"] is False
    # k_proj (r=4, scale 16/√4 = 8) is kept bit for bit: the one scale is 8
    assert report.serving.scale == vllm_scale == 8.0
    assert report.serving.rescaled_layers == 0
    for key, (b, a) in _deltas(out).items():
        name = key.removeprefix("base_model.model.")
        kept = next(x for x in report.layers if x.name == name)
        dense = before[name]
        if kept.action == "kept":
            assert np.allclose(vllm_scale * b @ a, dense, rtol=1e-6, atol=0)
        else:  # the best rank-k approximation, at the one scale
            u, s, vt = np.linalg.svd(dense)
            best = (u[:, :6] * s[:6]) @ vt[:6]
            assert np.linalg.norm(vllm_scale * b @ a - best) <= 1e-5 * np.linalg.norm(dense)
    checks = {c.server: c for c in report.serving.checks}
    assert checks["vllm"].verdict == "exact"
    # ranks 6 and 4 remain: llama.cpp's alpha / rank_ℓ differs on the rank-4 layers
    assert checks["llama.cpp"].verdict == "differs"
    assert checks["llama.cpp"].fix is not None and "--uniform-rank" in checks["llama.cpp"].fix


def test_uniform_rank_agrees_with_llama_cpp_rule(tmp_path: Path) -> None:
    source = _adapter(tmp_path, r=8, lora_alpha=16, rank_pattern={"k_proj": 4})
    adapter = load_adapter(source)
    out = tmp_path / "out"
    report = compress_adapter(
        adapter,
        options=CompressOptions(rule=RankRule(mode="rank", value=6), output=out, uniform_rank=True),
    )
    assert report.serving is not None and report.serving.ranks == (6,)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    alpha = float(np.float32(config["lora_alpha"]))
    by_name = {x.name: x for x in adapter.layers}
    for key, (b, a) in _deltas(out).items():
        layer = by_name[key.removeprefix("base_model.model.")]
        assert b.shape[1] == 6  # llama.cpp: alpha / b->ne[0]
        llama = alpha / b.shape[1] * b @ a
        fb, fa = adapter.load_factors(layer)
        dense = layer.scale * fb @ fa
        if layer.rank <= 6:  # kept, zero-padded: exact
            assert np.allclose(llama, dense, rtol=1e-6, atol=1e-12)
    assert {c.server: c.verdict for c in report.serving.checks}["llama.cpp"] == "exact"


def test_padding_is_zero_bytes_and_stored_layer_is_the_file(tmp_path: Path) -> None:
    adapter = load_adapter(_adapter(tmp_path, r=8, lora_alpha=16, rank_pattern={"k_proj": 4}))
    layer = next(x for x in adapter.layers if x.rank == 4)
    new = stored_layer(adapter, layer)
    assert isinstance(adapter.source, SafetensorsSource)
    assert bytes(memoryview(new.a.data)) == bytes(memoryview(adapter.source.raw(layer.a_key).data))
    wide = padded(new, 7)
    b = np.frombuffer(memoryview(wide.b.data).cast("B"), "<f4").reshape(wide.b.shape)
    a = np.frombuffer(memoryview(wide.a.data).cast("B"), "<f4").reshape(wide.a.shape)
    fb, fa = adapter.load_stored(layer)
    assert np.array_equal(b[:, :4], fb) and not b[:, 4:].any()
    assert np.array_equal(a[:4], fa) and not a[4:].any()
    assert np.array_equal(b @ a, fb @ fa)
    with pytest.raises(ValueError, match="cannot pad"):
        padded(new, 3)


def test_global_scale_is_the_kept_layers_most_common(tmp_path: Path) -> None:
    adapter = load_adapter(
        _adapter(tmp_path, r=8, lora_alpha=16, rank_pattern={"k_proj": 4})
    )  # q, v: 16/8 = 2; k: 16/4 = 4
    names = [x.name for x in adapter.layers]
    assert global_scale(adapter, rewritten=names) == 1.0
    assert global_scale(adapter, rewritten=[n for n in names if "k_proj" not in n]) == 4.0
    assert global_scale(adapter, rewritten=[]) == 2.0


def test_verdicts_for_extras_and_dora(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    layer = FakeLayer(
        name="model.layers.0.self_attn.q_proj",
        b=rng.standard_normal((8, 2)).astype(np.float32),
        a=rng.standard_normal((2, 8)).astype(np.float32),
    )
    source = write_peft(
        tmp_path / "x",
        FakeAdapter(
            layers=[layer],
            config={"r": 2, "lora_alpha": 2, "modules_to_save": ["score"]},
            extra={"base_model.model.score.weight": np.ones((2, 8), np.float32)},
        ),
    )
    adapter = load_adapter(source)
    result = serving(adapter, {layer.name: 2}, rewritten=[], scale=1.0, uniform_rank=False)
    assert result is not None
    verdicts = {c.server: c.verdict for c in result.checks}
    assert verdicts == {"peft": "exact", "vllm": "refused", "llama.cpp": "refused"}


def test_uniform_rank_is_for_peft_outputs(tmp_path: Path) -> None:
    from conftest import SAMPLES

    kohya = load_adapter(SAMPLES / "sd" / "kohya-lora.safetensors")
    with pytest.raises(UsageError, match="--uniform-rank"):
        check_uniform(kohya, uniform_rank=True)
    check_uniform(kohya, uniform_rank=False)


def test_cli_uniform_rank_for_compress_and_merge(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lora_audit.cli import app
    from lora_audit.report import SCHEMA_VERSION

    source = _adapter(tmp_path, r=8, lora_alpha=16, rank_pattern={"k_proj": 4})
    runner = CliRunner()
    for args in (
        ["compress", str(source), "--rank", "6", "--uniform-rank", "-o", str(tmp_path / "c")],
        [
            "merge",
            str(source),
            str(source),
            "--concat",
            "--uniform-rank",
            "-o",
            str(tmp_path / "m"),
        ],
    ):
        result = runner.invoke(app, [*args, "-f", "json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["schema_version"] == SCHEMA_VERSION
        assert report["serving"]["uniform_rank"] is True and len(report["serving"]["ranks"]) == 1
        verdicts = {c["server"]: c["verdict"] for c in report["serving"]["checks"]}
        assert verdicts == {"peft": "exact", "vllm": "exact", "llama.cpp": "exact"}
        out = Path(args[-1])
        assert json.loads((out / "adapter_config.json").read_text())["rank_pattern"] == {}
    # the table names the servers
    result = runner.invoke(app, ["compress", str(source), "--rank", "6", "--dry-run"])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("llama.cpp")]
    assert "differs" in row and "--uniform-rank" in result.stdout
