"""PEFT target_parameters (MoE experts) on tiny transformers v5 models, against ParamWrapper."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_audit.engine.device import EngineOptions
from lora_audit.engine.spectra import spectra
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

EXPERTS = 4


def _qwen3_moe() -> torch.nn.Module:
    config = transformers.Qwen3MoeConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        moe_intermediate_size=6,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_experts=EXPERTS,
        num_experts_per_tok=2,
    )
    return transformers.Qwen3MoeForCausalLM(config)


def _gpt_oss() -> torch.nn.Module:
    config = transformers.GptOssConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=6,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_local_experts=EXPERTS,
        num_experts_per_tok=2,
        layer_types=["full_attention"],
    )
    return transformers.GptOssForCausalLM(config)


MODELS = {"qwen3_moe": _qwen3_moe, "gpt_oss": _gpt_oss}  # (E, out, in) and (E, in, out)


def _save(make: str, out: Path, **lora: object) -> Path:
    torch.manual_seed(0)
    config = peft.LoraConfig(init_lora_weights=False, **lora)  # type: ignore[arg-type]
    peft.get_peft_model(MODELS[make](), config).save_pretrained(str(out))
    return out


def _reference(make: str, directory: Path) -> dict[str, np.ndarray]:
    """σ per expert of PEFT's ParamWrapper.get_delta_weight (and Linear's), float64."""
    torch.manual_seed(1)
    loaded = peft.PeftModel.from_pretrained(MODELS[make](), str(directory)).double()
    out = {}
    for name, module in loaded.base_model.model.named_modules():
        if not isinstance(module, peft.tuners.lora.LoraLayer):
            continue
        dw = module.get_delta_weight("default").detach().double().numpy()
        path = name.replace(".base_layer", "")
        if type(module).__name__ == "ParamWrapper":
            path = f"{path}.{module.parameter_name}"
            for e in range(dw.shape[0]):
                out[f"{path}[{e}]"] = np.linalg.svd(dw[e], compute_uv=False)
        else:
            out[path] = np.linalg.svd(dw, compute_uv=False)
    return out


def _assert_matches(path: Path, reference: dict[str, np.ndarray]) -> None:
    got = spectra(load_adapter(path), options=EngineOptions(device="cpu"))
    assert set(got) == set(reference)
    for name, want in reference.items():
        sigma = np.zeros_like(want)
        k = min(len(want), len(got[name]))
        sigma[:k] = got[name][:k]
        assert np.allclose(sigma, want, rtol=1e-6, atol=1e-6 * want[0]), name


@pytest.mark.parametrize("make", sorted(MODELS))
def test_each_expert_is_a_layer_with_peft_scale(make: str, tmp_path: Path) -> None:
    directory = _save(
        make,
        tmp_path / make,
        r=2,
        lora_alpha=6,
        target_modules=["q_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
        rank_pattern={"gate_up_proj": 3},
        alpha_pattern={"down_proj": 5},
    )
    _assert_matches(directory, _reference(make, directory))
    adapter = load_adapter(directory)
    by_name = {layer.name: layer for layer in adapter.layers}
    up = by_name["model.layers.0.mlp.experts.gate_up_proj[3]"]
    down = by_name["model.layers.0.mlp.experts.down_proj[0]"]
    assert (up.rank, up.out_features, up.in_features, up.scale) == (3, 12, 16, 2.0)
    assert (down.rank, down.out_features, down.in_features, down.scale) == (2, 16, 6, 2.5)
    assert {layer.scale_source for layer in adapter.layers} == {"config"}
    assert len(adapter.layers) == 2 * EXPERTS + 1


def test_a_single_target_parameter_has_no_nesting(tmp_path: Path) -> None:
    directory = _save(
        "qwen3_moe",
        tmp_path / "d",
        r=2,
        lora_alpha=2,
        target_modules=[],
        target_parameters=["mlp.experts.down_proj"],
        use_rslora=True,
    )
    _assert_matches(directory, _reference("qwen3_moe", directory))
    names = [layer.name for layer in load_adapter(directory).layers]
    assert names == [f"model.layers.0.mlp.experts.down_proj[{e}]" for e in range(EXPERTS)]


def test_file_alone_is_refused_naming_target_parameters(tmp_path: Path) -> None:
    directory = _save(
        "qwen3_moe",
        tmp_path / "d",
        r=2,
        lora_alpha=2,
        target_modules=[],
        target_parameters=["mlp.experts.down_proj"],
    )
    single = tmp_path / "weights.safetensors"
    shutil.copy(directory / "adapter_model.safetensors", single)
    with pytest.raises(InputError, match="target_parameters") as info:
        load_adapter(single)
    assert "adapter_config.json" in (info.value.hint or "")


def test_compress_is_refused(tmp_path: Path) -> None:
    from lora_audit.formats.peft_variants import compress_refusal

    directory = _save(
        "qwen3_moe",
        tmp_path / "d",
        r=2,
        lora_alpha=2,
        target_modules=[],
        target_parameters=["mlp.experts.down_proj"],
    )
    refusal = compress_refusal(load_adapter(directory))
    assert refusal is not None and "MoE expert" in str(refusal)
