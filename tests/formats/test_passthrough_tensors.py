"""Non-low-rank tensors in SD files: listed, not audited, copied unchanged by compress."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lora_audit.commands.compress import CompressOptions, compress_adapter
from lora_audit.decisions.compress_ranks import RankRule
from lora_audit.engine.device import EngineOptions
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter


def test_diff_and_oft_are_listed_and_copied(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "mixed.safetensors"
    m = "lora_unet_mid_block_attentions_0_proj_in"
    tensors = {
        f"{m}.lora_down.weight": rng.standard_normal((4, 16)).astype(np.float32),
        f"{m}.lora_up.weight": rng.standard_normal((12, 4)).astype(np.float32),
        f"{m}.alpha": np.array(4.0, np.float32),
        "lora_unet_conv_in.diff": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "lora_unet_conv_in.diff_b": rng.standard_normal(8).astype(np.float32),
        "lora_unet_proj_out.oft_blocks": rng.standard_normal((2, 4, 4)).astype(np.float32),
    }
    save_file(tensors, str(path))
    adapter = load_adapter(path)
    assert [layer.name for layer in adapter.layers] == [m]
    kept = {"lora_unet_conv_in.diff", "lora_unet_conv_in.diff_b", "lora_unet_proj_out.oft_blocks"}
    assert kept <= set(adapter.passthrough_keys)
    out = tmp_path / "out.safetensors"
    compress_adapter(
        adapter,
        options=CompressOptions(
            rule=RankRule(mode="rank", value=2), output=out, engine=EngineOptions(device="cpu")
        ),
    )
    written = load_file(str(out))
    for key in kept:
        assert np.array_equal(written[key], tensors[key]), key
    assert written[f"{m}.lora_down.weight"].shape == (2, 16)


def test_a_file_with_nothing_low_rank_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "full.safetensors"
    save_file({"lora_unet_conv_in.diff": np.ones((4, 4), np.float32)}, str(path))
    with pytest.raises(InputError):
        load_adapter(path)
    with pytest.raises(InputError, match="no low-rank modules"):
        load_adapter(path, input_format="kohya")
