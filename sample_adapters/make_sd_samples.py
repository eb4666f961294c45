"""Write small single-file Stable Diffusion-style adapters, one per format lora-audit reads.

These are *synthetic*: factors with a planted, decaying spectrum (the shape of a trained
update) in the key layouts of kohya/sd-scripts, LyCORIS (LoCon with a Tucker core, LoHa,
LoKr) and diffusers' attention processors, with SD-1.5-like module names and sizes cut down
to keep the files small. They exercise the readers; the PEFT samples next to them are real
trained adapters.

Run from the repository root::

    python sample_adapters/make_sd_samples.py            # writes sample_adapters/sd/*.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

DIM = 64  # stands in for SD's 320-channel blocks


def planted(
    out: int, inp: int, rank: int, *, gen: torch.Generator, decay: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """up (out, r), down (r, in) whose product has singular values ∝ decay**i."""
    u, _ = torch.linalg.qr(torch.randn(out, rank, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(inp, rank, generator=gen))
    s = torch.tensor([decay**i for i in range(rank)]).sqrt() * 0.05
    return (u * s), (v * s).T


def kohya(gen: torch.Generator) -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {}
    for block in range(2):
        for proj in ("to_q", "to_k", "to_v", "to_out_0"):
            m = f"lora_unet_down_blocks_0_attentions_{block}_transformer_blocks_0_attn1_{proj}"
            up, down = planted(DIM, DIM, 8, gen=gen)
            t[f"{m}.lora_up.weight"], t[f"{m}.lora_down.weight"] = up, down
            t[f"{m}.alpha"] = torch.tensor(4.0)
    for layer in range(2):
        m = f"lora_te_text_model_encoder_layers_{layer}_mlp_fc1"
        up, down = planted(4 * DIM, DIM, 8, gen=gen, decay=0.3)
        t[f"{m}.lora_up.weight"], t[f"{m}.lora_down.weight"] = up, down
        t[f"{m}.alpha"] = torch.tensor(8.0)
    m = "lora_unet_down_blocks_0_resnets_0_conv1"  # LoCon 3×3, flattened out × in·3·3
    up, down = planted(DIM, DIM * 9, 8, gen=gen)
    t[f"{m}.lora_up.weight"] = up.reshape(DIM, 8, 1, 1)
    t[f"{m}.lora_down.weight"] = down.reshape(8, DIM, 3, 3)
    t[f"{m}.alpha"] = torch.tensor(1.0)
    return {k: v.to(torch.float16) if v.dim() else v for k, v in t.items()}


def locon_tucker(gen: torch.Generator) -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {}
    for i in range(2):
        m = f"lora_unet_up_blocks_1_resnets_{i}_conv2"
        t[f"{m}.lora_down.weight"] = torch.randn(8, DIM, 1, 1, generator=gen) * 0.1
        t[f"{m}.lora_mid.weight"] = torch.randn(8, 8, 3, 3, generator=gen) * 0.1
        t[f"{m}.lora_up.weight"] = torch.randn(DIM, 8, 1, 1, generator=gen) * 0.01
        t[f"{m}.alpha"] = torch.tensor(4.0)
    return t


def loha(gen: torch.Generator) -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {}
    for proj in ("to_q", "to_k", "to_v"):
        m = f"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_{proj}"
        for w in ("w1", "w2"):
            a, b = planted(DIM, DIM, 4, gen=gen, decay=0.4)
            t[f"{m}.hada_{w}_a"], t[f"{m}.hada_{w}_b"] = a * 4, b * 4
        t[f"{m}.alpha"] = torch.tensor(2.0)
    return t


def lokr(gen: torch.Generator) -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {}
    for proj in ("to_q", "to_out_0"):
        m = f"lora_unet_up_blocks_2_attentions_0_transformer_blocks_0_attn1_{proj}"
        t[f"{m}.lokr_w1"] = torch.randn(4, 4, generator=gen)
        a, b = planted(DIM // 4, DIM // 4, 4, gen=gen)
        t[f"{m}.lokr_w2_a"], t[f"{m}.lokr_w2_b"] = a, b
        t[f"{m}.alpha"] = torch.tensor(4.0)
    m = "lora_unet_up_blocks_2_attentions_0_proj_out"  # full factors: scale 1
    t[f"{m}.lokr_w1"] = torch.randn(4, 4, generator=gen)
    t[f"{m}.lokr_w2"] = torch.randn(DIM // 4, DIM // 4, generator=gen) * 0.01
    return t


def diffusers(gen: torch.Generator) -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = {}
    p = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"
    for proj in ("to_q", "to_k", "to_v", "to_out"):
        up, down = planted(DIM, DIM, 4, gen=gen)
        t[f"{p}.{proj}_lora.up.weight"], t[f"{p}.{proj}_lora.down.weight"] = up, down
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "sd")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    kohya_meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "8",
        "ss_network_alpha": "4.0",
        "ss_base_model_version": "sd_v1",
    }
    files = {
        "kohya-lora.safetensors": (kohya(gen), kohya_meta),
        "lycoris-locon-tucker.safetensors": (
            locon_tucker(gen),
            {"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "locon"}'},
        ),
        "lycoris-loha.safetensors": (
            loha(gen),
            {"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "loha"}'},
        ),
        "lycoris-lokr.safetensors": (
            lokr(gen),
            {"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "lokr"}'},
        ),
        "diffusers-processor.safetensors": (diffusers(gen), {}),
    }
    for name, (tensors, meta) in files.items():
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(args.out / name), metadata=meta
        )
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
