"""XLabs (x-flux) Flux LoRAs: every processor layer read, against diffusers' own conversion.

x-flux's ``LoRALinearLayer`` with ``network_alpha=None`` (how its trainer and loader build
every processor) adds ``up(down(x))``: ΔW = up·down. diffusers'
``_convert_xlabs_flux_lora_to_diffusers`` splits each qkv ``up`` into q, k, v sharing ``down``;
stacking those rows back gives the reference ΔW, in float64.
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
from lora_audit.errors import InputError, UsageError
from lora_audit.formats import load_adapter

conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")

G = torch.Generator().manual_seed(11)
DIM, RANK = 6, 4


def rnd(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G, dtype=torch.float32)


def xlabs_tensors(*, singles: bool = True) -> dict[str, torch.Tensor]:
    """Two double blocks (img and txt streams) and one single block, as x-flux saves them."""
    t: dict[str, torch.Tensor] = {}
    for n in range(2):
        for proc, out in (("qkv_lora1", 3 * DIM), ("proj_lora1", DIM)):
            for which in (proc, proc.replace("1", "2")):
                key = f"double_blocks.{n}.processor.{which}"
                t[f"{key}.down.weight"] = rnd(RANK, DIM)
                t[f"{key}.up.weight"] = rnd(out, RANK)
    if singles:
        key = "single_blocks.0.processor"
        t[f"{key}.qkv_lora.down.weight"] = rnd(RANK, DIM)
        t[f"{key}.qkv_lora.up.weight"] = rnd(3 * DIM, RANK)
        t[f"{key}.proj_lora.down.weight"] = rnd(RANK, 5 * DIM)
        t[f"{key}.proj_lora.up.weight"] = rnd(DIM, RANK)
    return t


def reference(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """ΔW per x-flux processor layer, rebuilt from diffusers' converted state dict."""
    conv = conversion._convert_xlabs_flux_lora_to_diffusers(dict(tensors))

    def delta(*modules: str) -> np.ndarray:
        rows = [
            conv[f"transformer.{m}.lora_B.weight"].double().numpy()
            @ conv[f"transformer.{m}.lora_A.weight"].double().numpy()
            for m in modules
        ]
        return np.concatenate(rows, axis=0)

    ref = {}
    for name in {k.rsplit(".", 2)[0] for k in tensors}:
        block, n, _, proc = name.split(".")
        if block == "double_blocks":
            base = f"transformer_blocks.{n}.attn"
            img = ("to_q", "to_k", "to_v")
            txt = ("add_q_proj", "add_k_proj", "add_v_proj")
            targets = {
                "qkv_lora1": tuple(f"{base}.{m}" for m in img),
                "qkv_lora2": tuple(f"{base}.{m}" for m in txt),
                "proj_lora1": (f"{base}.to_out.0",),
                "proj_lora2": (f"{base}.to_add_out",),
            }[proc]
        else:
            base = f"single_transformer_blocks.{n}"
            targets = (
                (f"{base}.attn.to_q", f"{base}.attn.to_k", f"{base}.attn.to_v")
                if proc == "qkv_lora"
                else (f"{base}.proj_out",)
            )
        ref[name] = delta(*targets)
    return ref


def test_every_layer_matches_diffusers(tmp_path: Path) -> None:
    path = tmp_path / "xlabs.safetensors"
    tensors = xlabs_tensors()
    save_file(tensors, str(path))
    ref = reference(tensors)
    adapter = load_adapter(path)
    assert adapter.format == "xlabs"
    assert len(adapter.layers) == len(ref) == 10  # 8 double-block layers, 2 single-block
    assert {layer.scale_source for layer in adapter.layers} == {"fixed"}
    report = inspect_adapter(adapter, options=AuditOptions())
    assert {layer.name for layer in report.layers} == set(ref)
    for layer in report.layers:
        s = np.linalg.svd(ref[layer.name], compute_uv=False)[: layer.rank]
        assert np.abs(np.array(layer.singular_values) - s).max() <= 1e-6 * s[0], layer.name


def test_double_blocks_were_not_read_before(tmp_path: Path) -> None:
    """Before: double-block keys matched no pattern; a file of only those was refused."""
    path = tmp_path / "double.safetensors"
    save_file(xlabs_tensors(singles=False), str(path))
    with pytest.raises(InputError):
        load_adapter(path, input_format="peft")
    assert len(load_adapter(path).layers) == 8


def test_foreign_keys_are_refused_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "mixed.safetensors"
    save_file({**xlabs_tensors(), "double_blocks.0.img_mod.lin.lora_A": rnd(2, 3)}, str(path))
    with pytest.raises(InputError, match="XLabs"):
        load_adapter(path)


def test_compress_writes_what_diffusers_loads(tmp_path: Path) -> None:
    path = tmp_path / "xlabs.safetensors"
    tensors = xlabs_tensors()
    save_file(tensors, str(path))
    out = tmp_path / "small.safetensors"
    rule = RankRule(mode="rank", value=2)
    compress_adapter(load_adapter(path), options=CompressOptions(rule=rule, output=out))
    written = load_file(str(out))
    assert set(written) == set(tensors)
    assert {v.shape[0] for k, v in written.items() if k.endswith(".down.weight")} == {2}
    back = reference(written)
    for name, delta in reference(tensors).items():
        u, s, vt = np.linalg.svd(delta, full_matrices=False)
        optimal = (u[:, :2] * s[:2]) @ vt[:2]
        assert np.abs(back[name] - optimal).max() <= 1e-5 * s[0], name


def test_compress_refuses_mixed_ranks(tmp_path: Path) -> None:
    path = tmp_path / "xlabs.safetensors"
    tensors = xlabs_tensors()
    tensors["double_blocks.0.processor.proj_lora1.up.weight"][:, 1:] = 0  # rank 1 in fact
    save_file(tensors, str(path))
    rule = RankRule(mode="energy", value=0.999999)
    out = tmp_path / "small.safetensors"
    with pytest.raises(UsageError, match="one rank"):
        compress_adapter(load_adapter(path), options=CompressOptions(rule=rule, output=out))
    assert not out.exists()
