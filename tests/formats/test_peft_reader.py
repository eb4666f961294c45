"""Reading PEFT adapters: pairing, orientation, scales, patterns, and clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from factories import FakeAdapter, FakeLayer, write_peft
from safetensors.torch import save_file

from lora_audit.adapter import LayerKind
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter


def _layer(name: str, out: int = 12, inp: int = 10, r: int = 4, seed: int = 0) -> FakeLayer:
    gen = torch.Generator().manual_seed(seed)
    return FakeLayer(name, torch.randn(out, r, generator=gen), torch.randn(r, inp, generator=gen))


def test_scales_follow_patterns_and_rslora(tmp_path: Path) -> None:
    layers = [
        FakeLayer("m.layers.0.q_proj", torch.randn(12, 2), torch.randn(2, 10)),
        _layer("m.layers.0.v_proj", r=8),
        _layer("m.layers.1.q_proj", r=2),
    ]
    config = {
        "r": 8,
        "lora_alpha": 16,
        "use_rslora": True,
        "rank_pattern": {"q_proj": 2},
        "alpha_pattern": {r"layers\.1\.q_proj": 4},
    }
    adapter = load_adapter(write_peft(tmp_path / "a", FakeAdapter(layers, config)))
    by_name = {layer.name: layer for layer in adapter.layers}
    assert by_name["m.layers.0.q_proj"].scale == pytest.approx(16 / math.sqrt(2))
    assert by_name["m.layers.0.v_proj"].scale == pytest.approx(16 / math.sqrt(8))
    assert by_name["m.layers.1.q_proj"].scale == pytest.approx(4 / math.sqrt(2))
    assert by_name["m.layers.1.q_proj"].alpha == 4


def test_plain_scale_and_natural_order(tmp_path: Path) -> None:
    layers = [_layer(f"m.layers.{i}.q_proj", seed=i) for i in (10, 2, 1)]
    adapter = load_adapter(write_peft(tmp_path / "a", FakeAdapter(layers, {"lora_alpha": 8})))
    assert [layer.name for layer in adapter.layers] == [
        "m.layers.1.q_proj",
        "m.layers.2.q_proj",
        "m.layers.10.q_proj",
    ]
    assert {layer.scale for layer in adapter.layers} == {2.0}


def test_embedding_and_conv_orientation(tmp_path: Path) -> None:
    emb = FakeLayer("emb", torch.randn(16, 4), torch.randn(4, 50), embedding=True)
    conv = FakeLayer("conv", torch.randn(6, 4, 1, 1), torch.randn(4, 3, 3, 3))
    adapter = load_adapter(write_peft(tmp_path / "a", FakeAdapter([emb, conv], {"r": 4})))
    by_name = {layer.name: layer for layer in adapter.layers}
    e, c = by_name["emb"], by_name["conv"]
    assert e.kind is LayerKind.EMBEDDING and (e.out_features, e.in_features) == (16, 50)
    assert e.weight_shape == (50, 16)
    assert c.kind is LayerKind.CONV and (c.out_features, c.in_features) == (6, 27)
    assert c.weight_shape == (6, 3, 3, 3)
    b, a = adapter.load_factors(c)
    assert b.shape == (6, 4) and a.shape == (4, 27)


def test_passthrough_dora_bias_and_modules_to_save(tmp_path: Path) -> None:
    extra = {
        "base_model.model.q.lora_magnitude_vector": torch.ones(12),
        "base_model.model.q.lora_B.bias": torch.zeros(12),
        "base_model.model.classifier.weight": torch.ones(2, 10),
    }
    config = {"use_dora": True, "modules_to_save": ["classifier"]}
    adapter = load_adapter(write_peft(tmp_path / "a", FakeAdapter([_layer("q")], config, extra)))
    (layer,) = adapter.layers
    assert layer.dora and len(layer.extra_keys) == 2
    assert set(adapter.passthrough_keys) == set(extra)
    assert adapter.modules_to_save == ("classifier",)


def test_alpha_from_header_metadata_then_flag_then_default(tmp_path: Path) -> None:
    meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 2})}
    a = load_adapter(
        write_peft(tmp_path / "m", FakeAdapter([_layer("q")]), with_config=False, metadata=meta)
    )
    assert a.layers[0].scale == 0.5 and not a.warnings
    b = load_adapter(
        write_peft(tmp_path / "f", FakeAdapter([_layer("q")]), with_config=False), alpha=12
    )
    assert b.layers[0].scale == 3.0 and not b.warnings
    c = load_adapter(write_peft(tmp_path / "d", FakeAdapter([_layer("q")]), with_config=False))
    assert c.layers[0].scale == 1.0 and "assuming scale 1" in c.warnings[0]


def test_file_path_uses_sibling_config(tmp_path: Path) -> None:
    write_peft(tmp_path / "a", FakeAdapter([_layer("q")], {"lora_alpha": 8}))
    adapter = load_adapter(tmp_path / "a" / "adapter_model.safetensors")
    assert adapter.layers[0].scale == 2.0


def _error(path: Path, **kwargs: object) -> str:
    with pytest.raises(InputError) as info:
        load_adapter(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_half_pair_is_named(tmp_path: Path) -> None:
    d = tmp_path / "a"
    d.mkdir()
    save_file(
        {"base_model.model.q.lora_A.weight": torch.ones(2, 3)}, str(d / "adapter_model.safetensors")
    )
    assert "without their partner" in _error(d) and "'q'" not in _error(d).split("(")[0]


def test_rank_mismatch_between_factors(tmp_path: Path) -> None:
    layer = FakeLayer("q", torch.ones(5, 3), torch.ones(4, 6))
    assert "rank mismatch" in _error(write_peft(tmp_path / "a", FakeAdapter([layer], {"r": 4})))


def test_config_rank_disagrees_with_tensors(tmp_path: Path) -> None:
    path = write_peft(tmp_path / "a", FakeAdapter([_layer("q", r=4)], {"r": 8}))
    assert "config gives r = 8" in _error(path)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"peft_type": "IA3"}, "not supported"),
        ({"peft_type": "ADALORA"}, "no lora_E"),
        ({"r": 0}, "positive integer"),
        ({"lora_alpha": "sixteen"}, "finite"),
        ({"rank_pattern": {"q": True}}, "rank_pattern"),
    ],
)
def test_bad_config_values(tmp_path: Path, config: dict[str, object], needle: str) -> None:
    path = write_peft(tmp_path / "a", FakeAdapter([_layer("q")], config))
    assert needle in _error(path)


def test_config_not_json(tmp_path: Path) -> None:
    path = write_peft(tmp_path / "a", FakeAdapter([_layer("q")]))
    (path / "adapter_config.json").write_text("{not json")
    assert "not valid JSON" in _error(path)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
def test_pickles_are_refused_unopened(tmp_path: Path, suffix: str) -> None:
    f = tmp_path / f"adapter_model{suffix}"
    f.write_bytes(b"\x80\x04not really a pickle")
    assert "never opened" in _error(f)
    assert "never opened" in _error(tmp_path)


def test_directory_errors(tmp_path: Path) -> None:
    assert "no such file" in _error(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "no adapter here" in _error(tmp_path / "empty")
    for name in ("one", "two"):
        write_peft(tmp_path / "many" / name, FakeAdapter([_layer("q")]))
    assert "2 candidate adapters" in _error(tmp_path / "many")


def test_single_subdirectory_adapter_is_found(tmp_path: Path) -> None:
    write_peft(tmp_path / "outer" / "my_adapter", FakeAdapter([_layer("q")], {"lora_alpha": 4}))
    adapter = load_adapter(tmp_path / "outer")
    assert adapter.layers[0].scale == 1.0


def test_empty_tensor_from_zero3(tmp_path: Path) -> None:
    layer = FakeLayer("q", torch.ones(0), torch.ones(0))
    path = write_peft(tmp_path / "a", FakeAdapter([layer]), with_config=False)
    assert "ZeRO-3" in _error(path)
