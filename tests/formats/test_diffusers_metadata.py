"""diffusers pipeline LoRA files: per-component configs in ``lora_adapter_metadata``.

The files are written by diffusers' own ``save_lora_weights`` (as its training scripts call
it) from tiny models built from configs, with a different ``r`` / ``lora_alpha`` /
``alpha_pattern`` / rsLoRA per component. The reference is what diffusers loads: the file is
loaded back with ``StableDiffusionPipeline.lora_state_dict`` / ``load_lora_into_unet`` /
``load_lora_into_text_encoder`` into fresh models, and each PEFT layer's
``scaling · B · A`` is taken in float64.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from writers import tiny_unet

from lora_audit.commands.compress import CompressOptions, compress_adapter
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.decisions.compress_ranks import RankRule
from lora_audit.formats import load_adapter
from lora_audit.formats.kohya import read_kohya
from lora_audit.formats.safetensors_io import read_header

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

UNET_LORA = {
    "r": 4,
    "lora_alpha": 8,
    "target_modules": ["to_q", "to_k", "to_v", "to_out.0"],
    "alpha_pattern": {"to_k": 2},
    "rank_pattern": {"to_v": 3},
}
TE_LORA = {"r": 2, "lora_alpha": 6, "target_modules": ["q_proj", "v_proj"], "use_rslora": True}


def tiny_text_encoder() -> Any:
    torch.manual_seed(1)
    config = transformers.CLIPTextConfig(
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=40,
        max_position_embeddings=12,
    )
    return transformers.CLIPTextModel(config)


def save_pipeline_lora(directory: Path) -> Path:
    """What the diffusers training scripts do: add adapters, save with save_lora_weights."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet, te = tiny_unet(), tiny_text_encoder()
    torch.manual_seed(2)
    unet.add_adapter(peft.LoraConfig(init_lora_weights=False, **UNET_LORA))
    # transformers' add_adapter needs PEFT ≥ 0.22; inject with PEFT itself, as it does
    te_config = peft.LoraConfig(init_lora_weights=False, **TE_LORA)
    peft.inject_adapter_in_model(te_config, te)
    diffusers.StableDiffusionPipeline.save_lora_weights(
        save_directory=str(directory),
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(te)),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=te_config.to_dict(),
    )
    (file,) = directory.glob("*.safetensors")
    return file


def diffusers_deltas(file: Path) -> dict[str, np.ndarray]:
    """ΔW of every layer as diffusers loads the file, by our layer name, float64."""
    pipe = diffusers.StableDiffusionPipeline
    state, alphas, metadata = pipe.lora_state_dict(str(file), return_lora_metadata=True)
    unet, te = tiny_unet(), tiny_text_encoder()
    pipe.load_lora_into_unet(state, alphas, unet, adapter_name="x", metadata=metadata)
    load_text_encoder(state, metadata, te)
    return lora_deltas(unet, component="unet") | lora_deltas(te, component="text_encoder")


def lora_deltas(model: Any, *, component: str | None) -> dict[str, np.ndarray]:
    """``scaling · B · A`` of each PEFT layer of adapter ``x``, in float64, by module name."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer) and "x" in module.lora_A:
            b = module.lora_B["x"].weight.detach().double().numpy()
            a = module.lora_A["x"].weight.detach().double().numpy()
            delta = module.scaling["x"] * (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1))
            out[name if component is None else f"{component}.{name}"] = delta
    return out


def load_text_encoder(state: dict[str, Any], metadata: dict[str, Any], te: Any) -> None:
    """diffusers' _load_lora_into_text_encoder up to transformers' load_adapter (which needs
    PEFT ≥ 0.22): the prefix filtered out of keys and metadata, its _create_lora_config, then
    PEFT's inject + set_peft_model_state_dict, as transformers' load_adapter does."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from diffusers.utils.peft_utils import _create_lora_config

    prefix = "text_encoder."
    sd = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    sd = convert_state_dict_to_peft(convert_state_dict_to_diffusers(sd))
    meta = {k.removeprefix(prefix): v for k, v in metadata.items() if k.startswith(prefix)}
    config = _create_lora_config(sd, None, meta, {}, is_unet=False)
    peft.inject_adapter_in_model(config, te, adapter_name="x")
    result = peft.set_peft_model_state_dict(te, sd, adapter_name="x")
    assert not [k for k in result.unexpected_keys if "lora" in k]


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    file = save_pipeline_lora(tmp_path_factory.mktemp("sd"))
    return file, diffusers_deltas(file)


def assert_matches(file: Path, ref: dict[str, np.ndarray]) -> None:
    adapter = load_adapter(file)
    report = inspect_adapter(adapter, options=AuditOptions())
    assert {layer.name for layer in report.layers} == set(ref)
    for layer in report.layers:
        s = np.linalg.svd(ref[layer.name], compute_uv=False)[: layer.rank]
        got = np.array(layer.singular_values)
        assert np.abs(got - s).max() <= 1e-6 * s[0], layer.name


def test_each_component_gets_its_own_config(pipeline_file: tuple[Path, Any]) -> None:
    file, ref = pipeline_file
    metadata = json.loads(read_header(file).metadata["lora_adapter_metadata"])
    assert metadata["unet.lora_alpha"] == 8 and metadata["text_encoder.use_rslora"] is True
    assert_matches(file, ref)
    adapter = load_adapter(file)
    assert adapter.format == "diffusers-pipeline"
    assert {layer.scale_source for layer in adapter.layers} == {"metadata"}
    scales = {layer.name.rsplit(".", 1)[-1]: layer.scale for layer in adapter.layers}
    assert scales["to_q"] == 2.0 and scales["to_k"] == 0.5 and scales["to_v"] == 8 / 3
    assert scales["q_proj"] == pytest.approx(6 / np.sqrt(2))


def test_pipeline_metadata_was_read_at_scale_one_before(pipeline_file: tuple[Path, Any]) -> None:
    """Its diffusers-named keys (``lora.down``, ``lora_linear_layer.down``) went to the
    single-file reader, which knows no metadata: scale 1 for every layer."""
    file, _ = pipeline_file
    old = read_kohya(path=file, tensor_file=file)
    assert old.format == "diffusers" and {layer.scale for layer in old.layers} == {1.0}
    assert any(layer.scale != 1.0 for layer in load_adapter(file).layers)


@pytest.mark.parametrize(
    "rule", [RankRule(mode="rank", value=1), RankRule(mode="energy", value=0.9)]
)
def test_compress_is_what_diffusers_loads(
    pipeline_file: tuple[Path, Any], tmp_path: Path, rule: RankRule
) -> None:
    file, ref = pipeline_file
    out = tmp_path / "small" / "pytorch_lora_weights.safetensors"
    report = compress_adapter(load_adapter(file), options=CompressOptions(rule=rule, output=out))
    back = diffusers_deltas(out)
    assert set(back) == set(ref)
    ranks = {layer.name: layer.new_rank for layer in report.layers}
    for name, delta in ref.items():
        k = ranks[name]
        u, s, vt = np.linalg.svd(delta, full_matrices=False)
        optimal = (u[:, :k] * s[:k]) @ vt[:k]
        assert np.abs(back[name] - optimal).max() <= 1e-5 * s[0], name
    assert_matches(out, back)


def model_deltas(file: Path) -> dict[str, np.ndarray]:
    """ΔW of every layer as diffusers' model-level load_lora_adapter loads it, float64.

    ``weight_name`` is given: without it (or ``use_safetensors=True``) diffusers 0.42 loads
    the tensors without reading the header, i.e. ignores the config it wrote.
    """
    unet = tiny_unet()
    unet.load_lora_adapter(str(file.parent), weight_name=file.name, prefix=None, adapter_name="x")
    return lora_deltas(unet, component=None)


def test_model_level_form_and_its_compress(tmp_path: Path) -> None:
    """save_lora_adapter writes the unprefixed config; read as PEFT, compressed, reloaded."""
    unet = tiny_unet()
    torch.manual_seed(4)
    unet.add_adapter(peft.LoraConfig(init_lora_weights=False, **UNET_LORA))
    unet.save_lora_adapter(str(tmp_path / "model"))
    (file,) = (tmp_path / "model").glob("*.safetensors")
    metadata = json.loads(read_header(file).metadata["lora_adapter_metadata"])
    assert metadata["lora_alpha"] == 8 and metadata["alpha_pattern"] == {"to_k": 2}
    ref = model_deltas(file)
    assert_matches(file, ref)
    out = tmp_path / "small" / "pytorch_lora_weights.safetensors"
    rule = RankRule(mode="rank", value=1)
    compress_adapter(load_adapter(file), options=CompressOptions(rule=rule, output=out))
    back = model_deltas(out)
    for name, delta in ref.items():
        u, s, vt = np.linalg.svd(delta, full_matrices=False)
        assert np.abs(back[name] - s[0] * np.outer(u[:, 0], vt[0])).max() <= 1e-5 * s[0], name


def tiny_flux() -> Any:
    torch.manual_seed(5)
    return diffusers.FluxTransformer2DModel(
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=4,
        num_attention_heads=2,
        joint_attention_dim=8,
        pooled_projection_dim=8,
        axes_dims_rope=(0, 2, 2),
    )


def flux_deltas(file: Path) -> dict[str, np.ndarray]:
    pipe = diffusers.FluxPipeline
    state, alphas, metadata = pipe.lora_state_dict(
        str(file), return_alphas=True, return_lora_metadata=True
    )
    transformer = tiny_flux()
    pipe.load_lora_into_transformer(state, alphas, transformer, adapter_name="x", metadata=metadata)
    return lora_deltas(transformer, component="transformer")


def test_flux_transformer_component(tmp_path: Path) -> None:
    """FluxPipeline.save_lora_weights, as the Flux training scripts call it (PEFT key names)."""
    from peft.utils import get_peft_model_state_dict

    transformer = tiny_flux()
    config = {
        "r": 4,
        "lora_alpha": 4,
        "target_modules": ["to_q", "to_k", "proj_out", "ff.net.2"],
        "alpha_pattern": {"single_transformer_blocks.0.proj_out": 12, "to_k": 1},
        "use_rslora": True,
    }
    torch.manual_seed(6)
    transformer.add_adapter(peft.LoraConfig(init_lora_weights=False, **config))
    diffusers.FluxPipeline.save_lora_weights(
        save_directory=str(tmp_path / "flux"),
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
    )
    (file,) = (tmp_path / "flux").glob("*.safetensors")
    assert json.loads(read_header(file).metadata["lora_adapter_metadata"])["transformer.r"] == 4
    ref = flux_deltas(file)
    assert_matches(file, ref)
    scales = {layer.name: layer.scale for layer in load_adapter(file).layers}
    assert scales["transformer.single_transformer_blocks.0.proj_out"] == 6.0  # 12 / √4
    assert scales["transformer.transformer_blocks.0.attn.to_k"] == 0.5
    out = tmp_path / "small.safetensors"
    rule = RankRule(mode="rank", value=2)
    compress_adapter(load_adapter(file), options=CompressOptions(rule=rule, output=out))
    back = flux_deltas(out)
    for name, delta in ref.items():
        u, s, vt = np.linalg.svd(delta, full_matrices=False)
        optimal = (u[:, :2] * s[:2]) @ vt[:2]
        assert np.abs(back[name] - optimal).max() <= 1e-5 * s[0], name
