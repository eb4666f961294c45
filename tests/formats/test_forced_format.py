"""``--input-format`` forced: it picks the reader, never drops a scale the files give."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_proj import TinyProj, proj_sigma
from typer.testing import CliRunner

import lora_audit
from lora_audit.cli import app
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter

peft = pytest.importorskip("peft")


def _peft_dir(out: Path, *, r: int = 2, alpha: int = 4) -> Path:
    """A PEFT adapter written by ``save_pretrained``, scale lora_alpha / r = 2."""
    torch.manual_seed(0)
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, target_modules=["proj"], init_lora_weights=False
    )
    peft.get_peft_model(TinyProj(), config).save_pretrained(out)
    return out


def test_kohya_forced_on_a_peft_directory_is_refused(tmp_path: Path) -> None:
    """Before: read at scale 1, every σ half the adapter's, exit 0 with a warning."""
    d = _peft_dir(tmp_path / "ad")
    with pytest.raises(InputError, match="--input-format kohya would ignore the scales in") as e:
        load_adapter(d, input_format="kohya")
    assert "adapter_config.json" in str(e.value) and "--input-format peft" in str(e.value)
    result = CliRunner().invoke(app, ["inspect", str(d), "--input-format", "kohya"])
    assert result.exit_code == 3 and result.stdout == ""
    assert "would ignore the scales" in result.stderr


@pytest.mark.parametrize("fmt", ["auto", "peft"])
def test_the_peft_reader_applies_the_config_scale(tmp_path: Path, fmt: str) -> None:
    d = _peft_dir(tmp_path / "ad")
    (layer,) = load_adapter(d, input_format=fmt).layers
    assert layer.scale == 2.0 and layer.scale_source == "config"
    sigma = np.array(
        lora_audit.inspect(d, input_format=fmt, device="cpu").layers[0].singular_values
    )
    reference = proj_sigma(d, 2.0)[:2]
    assert np.abs(sigma - reference).max() <= 1e-12 * reference[0]


def test_mlx_forced_on_a_peft_directory_is_refused(tmp_path: Path) -> None:
    d = _peft_dir(tmp_path / "ad")
    with pytest.raises(InputError, match="--input-format mlx would ignore the scales"):
        load_adapter(d, input_format="mlx")


def test_a_file_without_any_scale_source_may_still_be_forced(tmp_path: Path) -> None:
    """No config, no metadata, no .alpha: nothing to ignore; kohya's convention applies."""
    d = _peft_dir(tmp_path / "ad")
    alone = tmp_path / "alone.safetensors"
    shutil.copy(d / "adapter_model.safetensors", alone)
    (layer,) = load_adapter(alone, input_format="kohya").layers
    assert layer.scale == 1.0


def test_kohya_forced_on_a_file_with_peft_metadata_is_refused(tmp_path: Path) -> None:
    d = _peft_dir(tmp_path / "ad")
    tensors = load_file(str(d / "adapter_model.safetensors"))
    path = tmp_path / "meta.safetensors"
    save_file(tensors, str(path), metadata={"lora_adapter_metadata": '{"r": 2, "lora_alpha": 4}'})
    assert load_adapter(path).layers[0].scale == 2.0
    with pytest.raises(InputError, match="lora_adapter_metadata"):
        load_adapter(path, input_format="kohya")
