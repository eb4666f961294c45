"""kohya / LyCORIS / diffusers single files: every structure against a dense float64 reference.

The references rebuild ΔW the way the loaders do (LyCORIS' einsum forms, torch.kron), not
through lora-audit's own factor builders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora_audit.adapter import Structure
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter

G = torch.Generator().manual_seed(0)


def rnd(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G, dtype=torch.float32)


def tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """LyCORIS' rebuild: einsum('i j k l, j r, i p -> p r k l', t, down, up)."""
    return torch.einsum("i j k l, j r, i p -> p r k l", t, wa, wb)


def build() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Tensors of a mixed file, and the dense ΔW (float64, out × rest) of each module."""
    t: dict[str, torch.Tensor] = {}
    ref: dict[str, torch.Tensor] = {}
    d = torch.float64
    # kohya linear with alpha
    m = "lora_unet_mid_block_attentions_0_proj_in"
    t[f"{m}.lora_down.weight"], t[f"{m}.lora_up.weight"] = rnd(4, 20), rnd(12, 4)
    t[f"{m}.alpha"] = torch.tensor(2.0)
    ref[m] = 0.5 * t[f"{m}.lora_up.weight"].to(d) @ t[f"{m}.lora_down.weight"].to(d)
    # kohya linear without alpha (scale 1), bf16
    m = "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    t[f"{m}.lora_down.weight"] = rnd(8, 16).bfloat16()
    t[f"{m}.lora_up.weight"] = rnd(24, 8).bfloat16()
    ref[m] = t[f"{m}.lora_up.weight"].to(d) @ t[f"{m}.lora_down.weight"].to(d)
    # LoCon 3x3
    m = "lora_unet_down_blocks_0_resnets_0_conv1"
    down, up = rnd(4, 6, 3, 3), rnd(10, 4, 1, 1)
    t[f"{m}.lora_down.weight"], t[f"{m}.lora_up.weight"], t[f"{m}.alpha"] = (
        down,
        up,
        torch.tensor(1.0),
    )
    ref[m] = 0.25 * up.reshape(10, 4).to(d) @ down.reshape(4, -1).to(d)
    # LoCon with Tucker core
    m = "lora_unet_down_blocks_1_resnets_0_conv2"
    down, mid, up = rnd(4, 6, 1, 1), rnd(4, 4, 3, 3), rnd(10, 4, 1, 1)
    t[f"{m}.lora_down.weight"], t[f"{m}.lora_mid.weight"], t[f"{m}.lora_up.weight"] = down, mid, up
    t[f"{m}.alpha"] = torch.tensor(4.0)
    w = tucker(mid.to(d), down.reshape(4, 6).to(d), up.reshape(10, 4).T.to(d))
    ref[m] = w.reshape(10, -1)
    # LoHa linear
    m = "lora_unet_up_blocks_0_attentions_0_proj_out"
    w1a, w1b, w2a, w2b = rnd(14, 3), rnd(3, 9), rnd(14, 3), rnd(3, 9)
    t.update(
        {
            f"{m}.hada_w1_a": w1a,
            f"{m}.hada_w1_b": w1b,
            f"{m}.hada_w2_a": w2a,
            f"{m}.hada_w2_b": w2b,
            f"{m}.alpha": torch.tensor(6.0),
        }
    )
    ref[m] = 2.0 * (w1a.to(d) @ w1b.to(d)) * (w2a.to(d) @ w2b.to(d))
    # LoHa conv with Tucker cores: w_a (r, out), w_b (r, in), t (r, r, kh, kw)
    m = "lora_unet_up_blocks_1_resnets_0_conv1"
    t1, t2 = rnd(3, 3, 3, 3), rnd(3, 3, 3, 3)
    w1a, w1b, w2a, w2b = rnd(3, 8), rnd(3, 5), rnd(3, 8), rnd(3, 5)
    t.update(
        {
            f"{m}.hada_t1": t1,
            f"{m}.hada_t2": t2,
            f"{m}.hada_w1_a": w1a,
            f"{m}.hada_w1_b": w1b,
            f"{m}.hada_w2_a": w2a,
            f"{m}.hada_w2_b": w2b,
        }
    )
    r1 = tucker(t1.to(d), w1b.to(d), w1a.to(d))
    r2 = tucker(t2.to(d), w2b.to(d), w2a.to(d))
    ref[m] = (r1 * r2).reshape(8, -1)
    # LoKr: full w1, low-rank w2
    m = "lora_unet_up_blocks_2_attentions_0_to_q"
    w1, w2a, w2b = rnd(4, 2), rnd(6, 3), rnd(3, 7)
    t.update(
        {
            f"{m}.lokr_w1": w1,
            f"{m}.lokr_w2_a": w2a,
            f"{m}.lokr_w2_b": w2b,
            f"{m}.alpha": torch.tensor(1.5),
        }
    )
    ref[m] = 0.5 * torch.kron(w1.to(d), w2a.to(d) @ w2b.to(d))
    # LoKr: low-rank w1, full w2 (scale alpha / w1 rank)
    m = "lora_unet_up_blocks_2_attentions_0_to_k"
    w1a, w1b, w2 = rnd(4, 2), rnd(2, 3), rnd(5, 6)
    t.update(
        {
            f"{m}.lokr_w1_a": w1a,
            f"{m}.lokr_w1_b": w1b,
            f"{m}.lokr_w2": w2,
            f"{m}.alpha": torch.tensor(1.0),
        }
    )
    ref[m] = 0.5 * torch.kron(w1a.to(d) @ w1b.to(d), w2.to(d))
    # LoKr conv: full w1, Tucker w2 (no low-rank w1/w2 dim? w2 is low-rank → alpha/r)
    m = "lora_unet_down_blocks_2_resnets_0_conv1"
    w1, t2, w2a, w2b = rnd(2, 2), rnd(3, 3, 3, 3), rnd(3, 4), rnd(3, 5)
    t.update(
        {
            f"{m}.lokr_w1": w1,
            f"{m}.lokr_t2": t2,
            f"{m}.lokr_w2_a": w2a,
            f"{m}.lokr_w2_b": w2b,
            f"{m}.alpha": torch.tensor(3.0),
        }
    )
    w2full = torch.einsum(
        "i j k l, i p, j r -> p r k l", t2.to(d), w2a.to(d), w2b.to(d)
    ).contiguous()
    ref[m] = torch.kron(w1.to(d).unsqueeze(2).unsqueeze(2), w2full).reshape(8, -1)
    return t, ref


@pytest.fixture
def sd_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors, ref = build()
    path = tmp_path / "my_lora.safetensors"
    save_file(
        tensors,
        str(path),
        metadata={
            "ss_network_dim": "4",
            "ss_network_alpha": "Dynamic",
            "ss_network_module": "lycoris.kohya",
        },
    )
    return path, ref


def test_every_structure_matches_dense(sd_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, ref = sd_file
    adapter = load_adapter(path)
    assert adapter.format == "lycoris"
    structures = {layer.name: layer.structure for layer in adapter.layers}
    assert set(structures) == set(ref)
    assert set(structures.values()) == set(Structure)
    report = inspect_adapter(adapter, options=AuditOptions(energy=0.9))
    for lr in report.layers:
        dense = ref[lr.name].numpy()
        s = np.linalg.svd(dense, compute_uv=False)
        expected = np.zeros(lr.rank)
        n = min(lr.rank, s.size)
        expected[:n] = s[:n]
        got = np.array(lr.singular_values)
        assert np.abs(got - expected).max() <= 1e-6 * s[0], lr.name
        assert lr.frobenius_norm == pytest.approx(np.linalg.norm(dense), rel=1e-9)
        assert lr.shape == dense.shape


def test_plain_kohya_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "k.safetensors"
    save_file(
        {
            "lora_unet_a.lora_down.weight": rnd(2, 5),
            "lora_unet_a.lora_up.weight": rnd(7, 2),
            "lora_unet_a.alpha": torch.tensor(1.0),
        },
        str(path),
        metadata={"ss_network_dim": "2"},
    )
    adapter = load_adapter(path)
    assert adapter.format == "kohya" and adapter.layers[0].scale == 0.5
    assert adapter.metadata["ss_network_dim"] == "2"


def test_diffusers_processor_names(tmp_path: Path) -> None:
    path = tmp_path / "d.safetensors"
    p = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"
    save_file(
        {
            f"{p}.to_q_lora.down.weight": rnd(2, 5),
            f"{p}.to_q_lora.up.weight": rnd(5, 2),
            f"{p}.to_out_lora.down.weight": rnd(2, 5),
            f"{p}.to_out_lora.up.weight": rnd(5, 2),
        },
        str(path),
    )
    adapter = load_adapter(path)
    assert adapter.format == "diffusers"
    assert [layer.name for layer in adapter.layers] == [f"{p}.to_out", f"{p}.to_q"]


def test_forcing_the_format(tmp_path: Path) -> None:
    path = tmp_path / "k.safetensors"
    save_file({"a.lora_down.weight": rnd(2, 5), "a.lora_up.weight": rnd(7, 2)}, str(path))
    with pytest.raises(InputError, match="no LoRA factors"):
        load_adapter(path, input_format="peft")


def test_half_modules_and_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "k.safetensors"
    save_file({"a.lora_down.weight": rnd(2, 5), "a.alpha": torch.tensor(1.0)}, str(path))
    with pytest.raises(InputError, match="not lora_up"):
        load_adapter(path)
    save_file(
        {"a.lora_down.weight": rnd(2, 5), "a.lora_up.weight": rnd(7, 2), "mystery.thing": rnd(3)},
        str(path),
    )
    adapter = load_adapter(path)
    assert "match no known pattern: 'mystery.thing'" in adapter.warnings[0]
    save_file({"mystery.thing": rnd(3)}, str(path))
    with pytest.raises(InputError):
        load_adapter(path)


def test_rank_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "k.safetensors"
    save_file({"a.lora_down.weight": rnd(2, 5), "a.lora_up.weight": rnd(7, 3)}, str(path))
    with pytest.raises(InputError, match="rank mismatch"):
        load_adapter(path)
