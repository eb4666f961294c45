"""ComfyUI-style files: ``lora_A``/``lora_B`` (or ``lora_down``/``lora_up``) and per-module alphas.

The references are diffusers' own converters (``lora_conversion_utils``), which bake each
module's ``alpha / rank`` into the factors the way diffusers loads these files; ΔW is then
``B @ A`` of the converted factors, in float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_audit.commands.compress import CompressOptions, compress_adapter
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.decisions.compress_ranks import RankRule
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter

conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")

G = torch.Generator().manual_seed(3)

#: Wan module → its diffusers name, as _convert_non_diffusers_wan_lora_to_diffusers maps it.
WAN = {
    "blocks.0.self_attn.q": "blocks.0.attn1.to_q",
    "blocks.0.self_attn.k": "blocks.0.attn1.to_k",
    "blocks.0.cross_attn.v": "blocks.0.attn2.to_v",
    "blocks.0.ffn.0": "blocks.0.ffn.net.0.proj",
    "blocks.1.self_attn.o": "blocks.1.attn1.to_out.0",
}


def rnd(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G, dtype=torch.float32)


def wan_file(path: Path, *, down: str = "lora_A", up: str = "lora_B") -> dict[str, torch.Tensor]:
    """A DiffSynth / ComfyUI Wan LoRA with a different alpha and rank in every module."""
    tensors: dict[str, torch.Tensor] = {}
    for i, module in enumerate(WAN):
        rank = 2 + i
        key = f"diffusion_model.{module}"
        tensors[f"{key}.{down}.weight"] = rnd(rank, 12)
        tensors[f"{key}.{up}.weight"] = rnd(16, rank)
        tensors[f"{key}.alpha"] = torch.tensor(float(3 * i + 1))
    save_file(tensors, str(path))
    return tensors


def wan_reference(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    converted = conversion._convert_non_diffusers_wan_lora_to_diffusers(dict(tensors))
    return {
        f"diffusion_model.{ours}": dense(converted, f"transformer.{theirs}")
        for ours, theirs in WAN.items()
    }


def dense(state: dict[str, torch.Tensor], module: str) -> np.ndarray:
    b = state[f"{module}.lora_B.weight"].to(torch.float64).numpy()
    a = state[f"{module}.lora_A.weight"].to(torch.float64).numpy()
    return b @ a


def assert_spectra(path: Path, reference: dict[str, np.ndarray]) -> None:
    adapter = load_adapter(path)
    report = inspect_adapter(adapter, options=AuditOptions())
    assert {layer.name for layer in report.layers} == set(reference)
    for layer in report.layers:
        s = np.linalg.svd(reference[layer.name], compute_uv=False)[: layer.rank]
        got = np.array(layer.singular_values)
        assert np.abs(got - s).max() <= 1e-6 * s[0], layer.name


@pytest.mark.parametrize(("down", "up"), [("lora_A", "lora_B"), ("lora_down", "lora_up")])
def test_wan_per_module_alpha_matches_diffusers(tmp_path: Path, down: str, up: str) -> None:
    path = tmp_path / "wan.safetensors"
    tensors = wan_file(path, down=down, up=up)
    assert_spectra(path, wan_reference(tensors))
    adapter = load_adapter(path)
    assert {layer.scale_source for layer in adapter.layers} == {"module_alpha"}
    assert not any("alpha" in w for w in adapter.warnings)
    assert adapter.format == ("comfyui" if down == "lora_A" else "kohya")


def test_wan_file_was_read_at_scale_one_before(tmp_path: Path) -> None:
    """The PEFT reader (the old path for lora_A keys) ignores the alphas: forcing it is refused."""
    path = tmp_path / "wan.safetensors"
    wan_file(path)
    with pytest.raises(InputError, match=r"would ignore the scales in \d+ per-module \.alpha"):
        load_adapter(path, input_format="peft")
    new = {layer.name: layer for layer in load_adapter(path).layers}
    assert all(new[f"diffusion_model.{m}"].scale != 1.0 for m in list(WAN)[1:])
    assert new["diffusion_model.blocks.0.cross_attn.v"].scale == pytest.approx(7 / 4)


@pytest.mark.parametrize("prefix", ["", "diffusion_model."])
def test_qwen_image_lora_matches_diffusers(tmp_path: Path, prefix: str) -> None:
    """Qwen-Image / OneTrainer-style dotted names, some modules without alpha (scale 1)."""
    modules = {
        "transformer_blocks.0.attn.to_q": (4, 8.0),
        "transformer_blocks.0.attn.add_k_proj": (2, 0.5),
        "transformer_blocks.1.img_mlp.net.2": (3, None),
    }
    tensors: dict[str, torch.Tensor] = {}
    for module, (rank, alpha) in modules.items():
        tensors[f"{prefix}{module}.lora_A.weight"] = rnd(rank, 10)
        tensors[f"{prefix}{module}.lora_B.weight"] = rnd(14, rank)
        if alpha is not None:
            tensors[f"{prefix}{module}.alpha"] = torch.tensor(alpha)
    path = tmp_path / "qwen.safetensors"
    save_file(tensors, str(path))
    converted = conversion._convert_non_diffusers_qwen_lora_to_diffusers(dict(tensors))
    assert_spectra(path, {f"{prefix}{m}": dense(converted, f"transformer.{m}") for m in modules})
    adapter = load_adapter(path)
    sources = {layer.name.removeprefix(prefix): layer.scale_source for layer in adapter.layers}
    assert sources == {
        "transformer_blocks.0.attn.to_q": "module_alpha",
        "transformer_blocks.0.attn.add_k_proj": "module_alpha",
        "transformer_blocks.1.img_mlp.net.2": "assumed",
    }
    (warning,) = [w for w in adapter.warnings if "store no .alpha" in w]
    assert "1 of 3 module(s)" in warning and "scale 1 assumed" in warning


def test_compress_writes_what_diffusers_loads(tmp_path: Path) -> None:
    """The compressed file keeps the lora_A/lora_B names; diffusers' converter reads it back
    as the optimal rank-k truncation of each module's true update."""
    path = tmp_path / "wan.safetensors"
    truth = wan_reference(wan_file(path))
    out = tmp_path / "small.safetensors"
    compress_adapter(
        load_adapter(path), options=CompressOptions(rule=RankRule(mode="rank", value=2), output=out)
    )
    written = load_file(str(out))
    assert not any("lora_down" in k or "lora_up" in k for k in written)
    back = wan_reference(written)
    for name, delta in truth.items():
        u, s, vt = np.linalg.svd(delta, full_matrices=False)
        k = min(2, int(np.sum(s > 0)))
        optimal = (u[:, :k] * s[:k]) @ vt[:k]
        assert np.abs(back[name] - optimal).max() <= 1e-5 * s[0], name
    again = load_adapter(out)
    assert {layer.rank for layer in again.layers} == {2}
    assert {layer.scale_source for layer in again.layers} == {"module_alpha"}


@pytest.mark.parametrize(("down", "up"), [("lora_A", "lora_B"), ("lora_down", "lora_up")])
def test_z_image_lora_matches_diffusers(tmp_path: Path, down: str, up: str) -> None:
    modules = {
        "layers.0.attention.to_q": (2, 4.0),
        "layers.0.feed_forward.w1": (3, 1.0),
        "layers.1.attention.to_out.0": (4, 16.0),
    }
    tensors: dict[str, torch.Tensor] = {}
    for module, (rank, alpha) in modules.items():
        tensors[f"diffusion_model.{module}.{down}.weight"] = rnd(rank, 6)
        tensors[f"diffusion_model.{module}.{up}.weight"] = rnd(5, rank)
        tensors[f"diffusion_model.{module}.alpha"] = torch.tensor(alpha)
    path = tmp_path / "zimage.safetensors"
    save_file(tensors, str(path))
    converted = conversion._convert_non_diffusers_z_image_lora_to_diffusers(dict(tensors))
    ref = {f"diffusion_model.{m}": dense(converted, f"transformer.{m}") for m in modules}
    assert_spectra(path, ref)


def test_hunyuan_video_comfyui_lora(tmp_path: Path) -> None:
    """HunyuanVideo LoRAs for ComfyUI (diffusion-pipe / musubi style ``diffusion_model.`` keys):
    diffusers' converter ignores their alphas, so the reference is ComfyUI's own rule
    (``LoRAAdapter.calculate_weight``: alpha / lora_A.shape[0] · B·A)."""
    modules = {
        "double_blocks.0.img_attn_qkv": (4, 2.0, 18),
        "double_blocks.0.txt_mlp.fc2": (2, 8.0, 6),
        "single_blocks.3.linear1": (3, 3.0, 30),
    }
    tensors: dict[str, torch.Tensor] = {}
    ref = {}
    for module, (rank, alpha, out) in modules.items():
        key = f"diffusion_model.{module}"
        a, b = rnd(rank, 6), rnd(out, rank)
        tensors |= {f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
        ref[key] = alpha / a.shape[0] * (b.double().numpy() @ a.double().numpy())
    path = tmp_path / "hunyuan.safetensors"
    save_file(tensors, str(path))
    assert_spectra(path, ref)
