"""diffusers' own SD training path: ``.lora.down``/``.up`` names beside ``lora_A``/``lora_B``.

``convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))`` renames the attention
factors (``to_q/k/v/out.0``) to ``.lora.down``/``.up`` and keeps PEFT's names for the others
(``conv1``/``conv2``); ``save_lora_weights`` writes both in one file. The reference is what
diffusers loads: the file goes through ``lora_state_dict`` / ``load_lora_into_unet`` into a
UNet built from the same config, and each PEFT layer's ``scaling · B · A`` is taken in float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from writers import tiny_unet

from lora_audit.commands.compress import CompressOptions, compress_adapter
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.decisions.compress_ranks import RankRule
from lora_audit.engine.device import EngineOptions
from lora_audit.formats import load_adapter
from lora_audit.formats.accounted import unread
from lora_audit.formats.safetensors_io import read_header

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]


def save_mixed(directory: Path, *, metadata: bool, targets: list[str] | None = None) -> Path:
    """What the diffusers SD training scripts do, with LoRA on attention and resnet convs."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = tiny_unet()
    torch.manual_seed(3)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets or TARGETS
    )
    unet.add_adapter(config)
    extra = {"unet_lora_adapter_metadata": unet.peft_config["default"].to_dict()}
    diffusers.StableDiffusionPipeline.save_lora_weights(
        save_directory=str(directory),
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        **(extra if metadata else {}),
    )
    (file,) = directory.glob("*.safetensors")
    return file


def loaded_deltas(file: Path) -> dict[str, np.ndarray]:
    """ΔW of every layer diffusers loads from ``file``, by our layer name, float64."""
    pipe = diffusers.StableDiffusionPipeline
    state, alphas, metadata = pipe.lora_state_dict(str(file), return_lora_metadata=True)
    unet = tiny_unet()
    pipe.load_lora_into_unet(state, alphas, unet, adapter_name="x", metadata=metadata)
    out = {}
    for name, module in unet.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer) and "x" in module.lora_A:
            b = module.lora_B["x"].weight.detach().double().numpy()
            a = module.lora_A["x"].weight.detach().double().numpy()
            delta = module.scaling["x"] * (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1))
            out[f"unet.{name}"] = delta
    return out


def truncated(m: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


@pytest.mark.parametrize("metadata", [False, True], ids=["no-metadata", "metadata"])
def test_every_layer_is_read_and_compressed_output_loads_in_full(
    tmp_path: Path, metadata: bool
) -> None:
    file = save_mixed(tmp_path / "in", metadata=metadata)
    keys = list(read_header(file).tensors)
    assert any(".lora.down." in k for k in keys) and any(".lora_A." in k for k in keys)
    reference = loaded_deltas(file)
    assert len(reference) == 48  # 32 attention projections, 16 resnet convs

    adapter = load_adapter(file)
    assert {layer.name for layer in adapter.layers} == set(reference)  # was 16 of 48
    assert adapter.passthrough_keys == ()
    engine = EngineOptions(device="cpu")
    report = inspect_adapter(adapter, options=AuditOptions(engine=engine))
    assert unread(adapter) == []
    for layer in report.layers:
        sigma = np.array(layer.singular_values)
        expected = np.linalg.svd(reference[layer.name], compute_uv=False)[: len(sigma)]
        np.testing.assert_allclose(sigma, expected, rtol=1e-5, atol=1e-7)

    out = tmp_path / "out.safetensors"
    rule = RankRule(mode="energy", value=0.9)  # ranks differ: diffusers' rank_pattern path
    plan = compress_adapter(adapter, options=CompressOptions(rule=rule, output=out, engine=engine))
    ranks = {layer.name: layer.new_rank for layer in plan.layers}
    assert len(set(ranks.values())) > 1
    written = list(read_header(out).tensors)
    assert not any(".lora.down." in k or ".lora.up." in k for k in written)  # one naming
    loaded = loaded_deltas(out)
    assert set(loaded) == set(reference)  # all 48 layers, not the 16 of the old output
    for name, delta in loaded.items():
        expected = truncated(reference[name], ranks[name])
        np.testing.assert_allclose(delta, expected, rtol=0, atol=1e-6)


def test_a_file_diffusers_loads_in_part_is_read_in_full_with_a_warning(tmp_path: Path) -> None:
    """LoRA on ``conv_in`` too: diffusers' own file starts with ``unet.conv_in.lora_A``, so its
    loader converts no name and drops every attention layer; the audit says so, reads all,
    and the compressed file loads in full."""
    file = save_mixed(tmp_path / "in", metadata=False, targets=["to_q", "conv_in"])
    loaded = loaded_deltas(file)
    adapter = load_adapter(file)
    assert len(loaded) == 1 < len(adapter.layers) == 9  # conv_in, and 8 to_q
    (warning,) = [w for w in adapter.warnings if "reads only part" in w]
    assert "'unet.conv_in.lora_A.weight'" in warning and "16 tensors" in warning
    out = tmp_path / "out.safetensors"
    engine = EngineOptions(device="cpu")
    compress_adapter(
        adapter,
        options=CompressOptions(rule=RankRule(mode="rank", value=4), output=out, engine=engine),
    )
    assert len(loaded_deltas(out)) == 9
    assert not [w for w in load_adapter(out).warnings if "reads only part" in w]
