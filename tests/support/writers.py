"""One small adapter file per writer, made by the writer's own code where it installs.

Each builder writes into a fresh directory and returns the path to pass to ``load_adapter``.
PEFT (LoRA on linear, conv and embedding layers; DoRA; ``lora_bias``), lycoris-lora (LoCon
with a Tucker core, LoHa, LoKr, and a full-diff module beside a LoRA one), diffusers (its
training scripts' ``save_lora_weights`` with and without per-component metadata), mlx-lm
(``linear_to_lora_layers``), gguf (``GGUFWriter``, as ``convert_lora_to_gguf.py`` writes), and
XLabs (x-flux's key layout; x-flux has no installable writer). Builders whose library is
missing are left out of :func:`builders`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Builder = Callable[[Path], Path]


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _tiny_torch() -> Any:
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(12, 8)
            self.q_proj = nn.Linear(8, 8)
            self.v_proj = nn.Linear(8, 8)
            self.conv = nn.Conv2d(4, 6, 3)

    torch.manual_seed(0)
    return Tiny()


def peft_dir(directory: Path, **config: Any) -> Path:
    import peft

    targets = config.pop("target_modules", ["q_proj", "v_proj", "conv", "embed"])
    lora = peft.LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, target_modules=targets)
    for key, value in config.items():
        setattr(lora, key, value)
    model = peft.get_peft_model(_tiny_torch(), lora)
    model.save_pretrained(str(directory))
    return directory


def lycoris_file(directory: Path, *, algo: str, **kw: Any) -> Path:
    import lycoris
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    lycoris.LycorisNetwork.apply_preset({"target_name": ["q_proj", "v_proj", "conv"]})
    net = lycoris.create_lycoris(
        _tiny_torch(), 1.0, linear_dim=4, linear_alpha=2, conv_dim=4, conv_alpha=2, algo=algo, **kw
    )
    net.apply_to()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "w2" in name or "up" in name or name.endswith("t2"):
                param.normal_(0, 0.1)  # LyCORIS zero-inits one factor
    path = directory / f"{algo}.safetensors"
    net.save_weights(str(path), torch.float32, {})
    return path


def tiny_unet() -> Any:
    """A two-block SD UNet from a config (seed 0), small enough for the tests."""
    import diffusers
    import torch

    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    )


def diffusers_file(directory: Path, *, metadata: bool) -> Path:
    """diffusers' training scripts: ``.lora.down`` attention and ``lora_A`` conv factors."""
    import diffusers
    import peft
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = tiny_unet()
    config = peft.LoraConfig(
        r=2, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_out.0", "conv1"]
    )
    unet.add_adapter(config)
    extra = {"unet_lora_adapter_metadata": config.to_dict()} if metadata else {}
    diffusers.StableDiffusionPipeline.save_lora_weights(
        save_directory=str(directory),
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        **extra,
    )
    return directory


def mlx_dir(directory: Path) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import save_config

    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=16,
        num_hidden_layers=1,
        intermediate_size=24,
        num_attention_heads=2,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=32,
    )
    model = llama.Model(args)
    model.freeze()
    params = {"rank": 2, "scale": 2.0, "dropout": 0.0}
    linear_to_lora_layers(model, 1, params)
    for _, module in model.named_modules():
        if hasattr(module, "lora_b"):
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.1
    directory.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(directory / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": params}
    save_config(config, directory / "adapter_config.json")
    return directory


def gguf_file(directory: Path) -> Path:
    import gguf

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "adapter.gguf"
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_type("adapter")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 4.0)
    rng = np.random.default_rng(0)
    for name in ("blk.0.attn_q.weight", "blk.0.attn_v.weight"):
        writer.add_tensor(f"{name}.lora_a", rng.standard_normal((2, 8)).astype(np.float32))
        writer.add_tensor(f"{name}.lora_b", rng.standard_normal((8, 2)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def xlabs_file(directory: Path) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    t: dict[str, np.ndarray] = {}
    for proc, out in (("qkv_lora1", 18), ("proj_lora1", 6), ("qkv_lora2", 18), ("proj_lora2", 6)):
        key = f"double_blocks.0.processor.{proc}"
        t[f"{key}.down.weight"] = rng.standard_normal((2, 6)).astype(np.float32)
        t[f"{key}.up.weight"] = rng.standard_normal((out, 2)).astype(np.float32)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "xlabs.safetensors"
    save_file(t, str(path))
    return path


def builders() -> dict[str, Builder]:
    """Every builder whose writer library is installed, by name."""
    out: dict[str, Builder] = {}
    if _has("peft"):
        out |= {
            "peft": peft_dir,
            "peft-dora": lambda d: peft_dir(d, use_dora=True, target_modules=["q_proj", "conv"]),
            "peft-bias": lambda d: peft_dir(d, lora_bias=True, target_modules=["q_proj"]),
        }
    if _has("lycoris"):
        out |= {
            "lycoris-locon-tucker": lambda d: lycoris_file(d, algo="locon", use_tucker=True),
            "lycoris-loha": lambda d: lycoris_file(d, algo="loha"),
            "lycoris-lokr": lambda d: lycoris_file(d, algo="lokr", factor=2),
        }
    if _has("diffusers") and _has("peft"):
        out |= {
            "diffusers": lambda d: diffusers_file(d, metadata=False),
            "diffusers-pipeline": lambda d: diffusers_file(d, metadata=True),
        }
    if _has("mlx_lm") and _has("mlx.core"):
        out["mlx-lm"] = mlx_dir
    if _has("gguf"):
        out["gguf"] = gguf_file
    out["xlabs"] = xlabs_file
    return out
