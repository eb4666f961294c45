"""mlx-lm adapters, made by mlx-lm 0.32's own code, against the update mlx-lm applies.

Each adapter is built with ``linear_to_lora_layers`` on a tiny mlx-lm model and saved the way
``mlx_lm.lora`` saves it (``mx.save_safetensors`` of the trainable parameters, ``save_config``
of the run's arguments). The references are mlx-lm's own ``fuse()`` (base weights zeroed, so
the fused weight is exactly the float32 ΔW mlx-lm computes) and, for the 1e-6 bound, the same
formula in float64.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
pytest.importorskip("mlx_lm")

from mlx.utils import tree_flatten  # noqa: E402
from mlx_lm.models import llama, mixtral  # noqa: E402
from mlx_lm.tuner.utils import linear_to_lora_layers, load_adapters  # noqa: E402
from mlx_lm.utils import save_config  # noqa: E402

from lora_audit.engine.device import EngineOptions  # noqa: E402
from lora_audit.engine.spectra import analyse  # noqa: E402
from lora_audit.errors import InputError  # noqa: E402
from lora_audit.formats import load_adapter  # noqa: E402

RTOL = 1e-6


def _llama() -> Any:
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=48,
        num_hidden_layers=2,
        intermediate_size=80,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=64,
    )
    return llama.Model(args)


def _mixtral() -> Any:
    args = mixtral.ModelArgs(
        model_type="mixtral",
        vocab_size=64,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=3,
        num_experts_per_tok=2,
    )
    return mixtral.Model(args)


def _zero_base(model: Any) -> None:
    """Zero every base weight so that ``fuse()`` returns ΔW itself."""
    model.update(
        {k: v for k, v in _map(model.parameters(), lambda v: mx.zeros(v.shape, v.dtype)).items()}
    )


def _map(tree: Any, fn: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _map(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map(v, fn) for v in tree]
    return fn(tree)


def write_mlx(
    directory: Path,
    model: Any,
    *,
    rank: int,
    scale: float,
    num_layers: int = 2,
    dora: bool = False,
    keys: list[str] | None = None,
    seed: int = 0,
    dtype: Any = None,
) -> dict[str, Any]:
    """Train-free mlx-lm adapter: LoRA layers as ``mlx_lm.lora`` makes them, random ``lora_b``."""
    mx.random.seed(seed)
    _zero_base(model)
    model.freeze()
    params: dict[str, Any] = {"rank": rank, "scale": scale, "dropout": 0.0}
    if keys is not None:
        params["keys"] = keys
    linear_to_lora_layers(model, num_layers, params, use_dora=dora)
    lora_modules = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_b"):
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.1
            if dtype is not None:
                module.lora_a = module.lora_a.astype(dtype)
                module.lora_b = module.lora_b.astype(dtype)
            lora_modules[name] = module
    directory.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(directory / "adapters.safetensors"), weights)
    save_config(
        {
            "fine_tune_type": "dora" if dora else "lora",
            "num_layers": num_layers,
            "lora_parameters": params,
            "model": "tiny-test-model",
            "learning_rate": 1e-5,
        },
        directory / "adapter_config.json",
    )
    return lora_modules


def _fused_delta(module: Any) -> np.ndarray:
    """mlx-lm's own ΔW: the fused weight of a module whose base weight is zero."""
    fused = module.fuse(dequantize=True)
    return np.array(fused.weight.astype(mx.float32), dtype=np.float64)


def _sigmas(path: Path, **kw: Any) -> tuple[Any, dict[str, np.ndarray]]:
    adapter = load_adapter(path, **kw)
    result = analyse(adapter, options=EngineOptions(device="cpu"))
    return adapter, result.sigmas


def _sv(m: np.ndarray, k: int) -> np.ndarray:
    return np.linalg.svd(m, compute_uv=False)[:k]


def test_lora_linear_matches_mlx_fuse(tmp_path: Path) -> None:
    modules = write_mlx(tmp_path / "ad", _llama(), rank=4, scale=7.5)
    adapter, sigmas = _sigmas(tmp_path / "ad")
    assert adapter.format == "mlx"
    assert {layer.scale_source for layer in adapter.layers} == {"config"}
    assert {layer.scale for layer in adapter.layers} == {7.5}
    assert adapter.warnings == ()
    assert set(sigmas) == set(modules) and len(modules) == 14  # 7 linears × 2 blocks
    for name, module in modules.items():
        a = np.array(module.lora_a, dtype=np.float64)  # (in, r)
        b = np.array(module.lora_b, dtype=np.float64)  # (r, out)
        exact = 7.5 * b.T @ a.T  # mlx-lm's formula, in float64
        fused = _fused_delta(module)
        assert fused.shape == exact.shape
        np.testing.assert_allclose(fused, exact, rtol=0, atol=1e-5 * np.abs(exact).max())
        np.testing.assert_allclose(sigmas[name], _sv(exact, 4), rtol=RTOL)
        layer = next(x for x in adapter.layers if x.name == name)
        assert (layer.out_features, layer.in_features) == fused.shape


def test_switch_linear_is_one_layer_per_expert(tmp_path: Path) -> None:
    modules = write_mlx(tmp_path / "moe", _mixtral(), rank=3, scale=2.0, num_layers=1)
    switch = {n: m for n, m in modules.items() if "switch_mlp" in n}
    assert switch, "mixtral's experts should get LoRASwitchLinear layers"
    adapter, sigmas = _sigmas(tmp_path / "moe")
    assert {x.scale for x in adapter.layers} == {2.0}
    for name, module in switch.items():
        fused = _fused_delta(module)  # (E, out, in)
        a = np.array(module.lora_a, dtype=np.float64)  # (E, r, in)
        b = np.array(module.lora_b, dtype=np.float64)  # (E, out, r)
        for e in range(fused.shape[0]):
            exact = 2.0 * b[e] @ a[e]
            np.testing.assert_allclose(fused[e], exact, atol=1e-5 * np.abs(exact).max())
            np.testing.assert_allclose(sigmas[f"{name}[{e}]"], _sv(exact, 3), rtol=RTOL)
    assert all(f"{name}[3]" not in sigmas for name in switch)


def test_bf16_and_dora(tmp_path: Path) -> None:
    modules = write_mlx(tmp_path / "d", _llama(), rank=2, scale=3.0, dora=True, dtype=mx.bfloat16)
    adapter, sigmas = _sigmas(tmp_path / "d")
    assert {layer.dtype for layer in adapter.layers} == {"BF16"}
    assert all(layer.dora and layer.extra_keys[0].endswith(".m") for layer in adapter.layers)
    for name, module in modules.items():
        a = np.array(module.lora_a.astype(mx.float32), dtype=np.float64)
        b = np.array(module.lora_b.astype(mx.float32), dtype=np.float64)
        np.testing.assert_allclose(sigmas[name], _sv(3.0 * b.T @ a.T, 2), rtol=RTOL)


def test_embedding_lora(tmp_path: Path) -> None:
    modules = write_mlx(
        tmp_path / "e", _llama(), rank=2, scale=1.5, keys=["model.embed_tokens", "self_attn.q_proj"]
    )
    adapter, sigmas = _sigmas(tmp_path / "e")
    layer = next(x for x in adapter.layers if x.name == "model.embed_tokens")
    assert layer.kind.value == "embedding" and layer.weight_shape == (64, 48)
    module = modules["model.embed_tokens"]
    exact = 1.5 * np.array(module.lora_a, np.float64) @ np.array(module.lora_b, np.float64)
    np.testing.assert_allclose(_fused_delta(module), exact, atol=1e-5 * np.abs(exact).max())
    np.testing.assert_allclose(sigmas["model.embed_tokens"], _sv(exact, 2), rtol=RTOL)


def test_numbered_checkpoints_are_ignored_in_a_directory(tmp_path: Path) -> None:
    write_mlx(tmp_path / "ad", _llama(), rank=2, scale=4.0)
    final = tmp_path / "ad" / "adapters.safetensors"
    (tmp_path / "ad" / "0000100_adapters.safetensors").write_bytes(final.read_bytes())
    (tmp_path / "ad" / "0000200_adapters.safetensors").write_bytes(final.read_bytes())
    adapter = load_adapter(tmp_path / "ad")
    assert adapter.tensor_file == final
    named = load_adapter(tmp_path / "ad" / "0000100_adapters.safetensors")
    assert named.format == "mlx" and {x.scale for x in named.layers} == {4.0}


def test_file_without_config_assumes_the_default_scale_loudly(tmp_path: Path) -> None:
    write_mlx(tmp_path / "ad", _llama(), rank=2, scale=4.0)
    (tmp_path / "ad" / "adapter_config.json").unlink()
    adapter = load_adapter(tmp_path / "ad" / "adapters.safetensors")
    assert adapter.format == "mlx"
    assert {x.scale_source for x in adapter.layers} == {"assumed"}
    assert {x.scale for x in adapter.layers} == {20.0}
    assert "assuming mlx-lm's default scale 20" in adapter.warnings[0]
    option = load_adapter(tmp_path / "ad" / "adapters.safetensors", alpha=8.0)
    assert {(x.scale, x.scale_source) for x in option.layers} == {(4.0, "option")}


def test_config_rank_mismatch_and_full_fine_tune_are_refused(tmp_path: Path) -> None:
    write_mlx(tmp_path / "ad", _llama(), rank=2, scale=4.0)
    config_path = tmp_path / "ad" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["lora_parameters"]["rank"] = 8
    config_path.write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"lora_parameters\.rank is 8"):
        load_adapter(tmp_path / "ad")
    del config["lora_parameters"]["scale"]
    config["lora_parameters"]["alpha"] = 16
    config_path.write_text(json.dumps(config))
    with pytest.raises(InputError, match="no 'scale'"):
        load_adapter(tmp_path / "ad")
    config["fine_tune_type"] = "full"
    config_path.write_text(json.dumps(config))
    with pytest.raises(InputError, match="full fine-tune"):
        load_adapter(tmp_path / "ad")


def test_mlx_lm_loads_what_it_wrote(tmp_path: Path) -> None:
    """The fixture is what mlx-lm's own loader accepts (guards the helper above)."""
    write_mlx(tmp_path / "ad", _llama(), rank=2, scale=4.0)
    model = _llama()
    model.freeze()
    load_adapters(model, str(tmp_path / "ad"))


def _truncate(m: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


@pytest.mark.parametrize("model_fn", [_llama, _mixtral])
def test_compress_writes_what_mlx_lm_loads(tmp_path: Path, model_fn: Any) -> None:
    from typer.testing import CliRunner

    from lora_audit.cli import app

    modules = write_mlx(tmp_path / "ad", model_fn(), rank=4, scale=7.5, num_layers=1)
    out = tmp_path / "out"
    args = ["compress", str(tmp_path / "ad"), "-o", str(out), "--rank", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["lora_parameters"] == {"rank": 2, "scale": 1.0, "dropout": 0.0}
    assert config["model"] == "tiny-test-model"  # the rest of the config is kept
    model = model_fn()
    _zero_base(model)
    model.freeze()
    load_adapters(model, str(out))  # mlx-lm's own loader checks every shape against rank 2
    loaded = dict(model.named_modules())
    for name, module in modules.items():
        fused = _fused_delta(loaded[name])
        a = np.array(module.lora_a, dtype=np.float64)
        b = np.array(module.lora_b, dtype=np.float64)
        if a.ndim == 2:
            original = [7.5 * b.T @ a.T]
        else:
            original = [7.5 * b[e] @ a[e] for e in range(a.shape[0])]
        for e, delta in enumerate(original):
            got = fused if a.ndim == 2 else fused[e]
            want = _truncate(delta, 2)
            np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_compress_refuses_uneven_ranks(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lora_audit.cli import app

    write_mlx(tmp_path / "ad", _llama(), rank=4, scale=7.5)
    file = str(tmp_path / "ad" / "adapters.safetensors")
    weights = mx.load(file)
    key = "model.layers.0.self_attn.q_proj.lora_b"  # (r, out): one rank left in this layer
    weights[key] = mx.concatenate([weights[key][:1], mx.zeros((3, weights[key].shape[1]))])
    mx.save_safetensors(file, weights)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["compress", str(tmp_path / "ad"), "-o", str(out), "--energy", "0.99"]
    )
    assert result.exit_code == 2, result.output
    assert "mlx-lm (lora_parameters.rank) loads every layer at one rank" in result.output
    assert "--rank" in result.output
    assert not out.exists()


def test_input_format_mlx_and_the_peft_reader_on_mlx_keys(tmp_path: Path) -> None:
    write_mlx(tmp_path / "ad", _llama(), rank=2, scale=4.0)
    file = tmp_path / "ad" / "adapters.safetensors"
    assert load_adapter(file, input_format="mlx").format == "mlx"
    with pytest.raises(InputError, match=r"would ignore the scales in .*lora_parameters") as info:
        load_adapter(file, input_format="peft")  # the config's scale is mlx-lm's: not PEFT's
    assert "drop --input-format" in str(info.value)
