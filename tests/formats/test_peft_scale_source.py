"""Where each PEFT layer's scale came from; PiSSA-style adapters; LyCORIS scale warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factories import FakeAdapter, FakeLayer, write_peft
from safetensors.torch import save_file
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter


def _layers() -> list[FakeLayer]:
    gen = torch.Generator().manual_seed(0)
    return [
        FakeLayer(f"m.{n}", torch.randn(8, 2, generator=gen), torch.randn(2, 6, generator=gen))
        for n in ("q", "v")
    ]


def test_scale_source_config_metadata_option_assumed(tmp_path: Path) -> None:
    config = {"r": 2, "lora_alpha": 4, "alpha_pattern": {"v": 6}}
    with_config = load_adapter(write_peft(tmp_path / "c", FakeAdapter(_layers(), config)))
    assert {x.scale_source for x in with_config.layers} == {"config"}
    assert [x.scale for x in with_config.layers] == [2.0, 3.0]

    meta = {"lora_adapter_metadata": json.dumps(config)}
    d = write_peft(tmp_path / "m", FakeAdapter(_layers()), with_config=False, metadata=meta)
    from_header = load_adapter(d / "adapter_model.safetensors")
    assert {x.scale_source for x in from_header.layers} == {"metadata"}
    assert [x.scale for x in from_header.layers] == [2.0, 3.0]

    bare = write_peft(tmp_path / "b", FakeAdapter(_layers()), with_config=False)
    assumed = load_adapter(bare / "adapter_model.safetensors")
    assert {x.scale_source for x in assumed.layers} == {"assumed"}
    assert any("assuming scale 1" in w for w in assumed.warnings)
    option = load_adapter(bare / "adapter_model.safetensors", alpha=8.0)
    assert {x.scale_source for x in option.layers} == {"option"} and not option.warnings
    assert {x.scale for x in option.layers} == {4.0}


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "lora_ga", "loftq"])
def test_base_relative_init_is_flagged(tmp_path: Path, init: str) -> None:
    config = {"r": 2, "lora_alpha": 2, "init_lora_weights": init}
    adapter = load_adapter(write_peft(tmp_path / "a", FakeAdapter(_layers(), config)))
    (warning,) = adapter.warnings
    assert f"init_lora_weights = {init!r}" in warning and "not the change" in warning
    if init != "loftq":
        assert "path_initial_model_for_weight_conversion" in warning


@pytest.mark.parametrize("init", [True, False, "gaussian", "eva", "orthogonal"])
def test_plain_inits_are_not_flagged(tmp_path: Path, init: object) -> None:
    config = {"r": 2, "lora_alpha": 2, "init_lora_weights": init}
    assert not load_adapter(write_peft(tmp_path / "a", FakeAdapter(_layers(), config))).warnings


def test_pissa_saved_by_peft_warns_on_stderr_and_converted_one_does_not(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.Linear(10, 8))
    config = peft.LoraConfig(r=2, lora_alpha=2, init_lora_weights="pissa", target_modules=["0"])
    model = peft.get_peft_model(base, config)
    model.save_pretrained(str(tmp_path / "init"))
    for name, p in model.named_parameters():  # "training"
        if "lora_" in name:
            p.data += 0.01 * torch.randn_like(p)
    model.save_pretrained(str(tmp_path / "raw"))
    model.save_pretrained(
        str(tmp_path / "converted"), path_initial_model_for_weight_conversion=str(tmp_path / "init")
    )
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "raw"), "-f", "json"])
    assert result.exit_code == 0
    assert "path_initial_model_for_weight_conversion" in result.stderr
    assert "init_lora_weights" in json.dumps(json.loads(result.stdout)["warnings"])
    converted = load_adapter(tmp_path / "converted")
    assert not converted.warnings and converted.layers[0].rank == 4  # plain LoRA of rank 2r


def test_lycoris_file_without_alpha_warns(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {
        f"lora_unet_x.hada_{w}": torch.randn(*shape, generator=gen)
        for w, shape in (("w1_a", (8, 2)), ("w1_b", (2, 6)), ("w2_a", (8, 2)), ("w2_b", (2, 6)))
    }
    path = tmp_path / "loha.safetensors"
    save_file(tensors, str(path))
    adapter = load_adapter(path)
    assert any("store no .alpha" in w and "scale 1 assumed" in w for w in adapter.warnings)
    save_file({**tensors, "lora_unet_x.alpha": torch.tensor(2.0)}, str(path))
    assert not load_adapter(path).warnings


def test_compress_refuses_peft_variants_by_name(tmp_path: Path) -> None:
    layers = _layers()
    extra = {f"base_model.model.{x.name}.lora_E": torch.ones(2, 1) for x in layers}
    config = {"peft_type": "ADALORA", "init_r": 2, "lora_alpha": 2, "r": 8}
    directory = write_peft(tmp_path / "a", FakeAdapter(layers, config, extra))
    assert load_adapter(directory).format == "peft-adalora"
    result = CliRunner().invoke(
        app, ["compress", str(directory), "-o", str(tmp_path / "o"), "--rank", "1"]
    )
    assert result.exit_code == 3 and "PEFT AdaLoRA" in result.stderr
    assert not (tmp_path / "o").exists()
    with pytest.raises(InputError, match="no lora_E"):
        bad = write_peft(tmp_path / "b", FakeAdapter(layers, config))
        load_adapter(bad)
