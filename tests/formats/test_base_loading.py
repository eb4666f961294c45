"""Finding base checkpoints, matching adapter layers to their weights, and refusing bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import FakeAdapter, FakeLayer, write_peft
from safetensors.torch import save_file

from lora_audit.errors import InputError
from lora_audit.formats import load_adapter
from lora_audit.formats.base_model import match_base_weights, open_base, unmatched_error

OUT, IN, R = 12, 8, 2


def lora(name: str, out: int = OUT, inp: int = IN, *, embedding: bool = False) -> FakeLayer:
    gen = torch.Generator().manual_seed(len(name))
    return FakeLayer(
        name, torch.randn(out, R, generator=gen), torch.randn(R, inp, generator=gen), embedding
    )


def peft_adapter(tmp_path: Path, layers: list[FakeLayer], **config: object) -> Path:
    return write_peft(tmp_path / "adapter", FakeAdapter(layers, dict(config)))


def base_file(
    path: Path, tensors: dict[str, tuple[int, ...]], dtype: torch.dtype = torch.float32
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.randn(*s).to(dtype) for k, s in tensors.items()}, str(path))
    return path


def sharded(directory: Path, shards: dict[str, dict[str, tuple[int, ...]]]) -> Path:
    weight_map = {}
    for name, tensors in shards.items():
        base_file(directory / name, tensors)
        weight_map.update(dict.fromkeys(tensors, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def test_peft_prefix_dropped_to_match_a_bare_base(tmp_path: Path) -> None:
    """SEQ_CLS adapters name ``bert.encoder…``; a BertModel checkpoint stores ``encoder…``."""
    adapter = load_adapter(peft_adapter(tmp_path, [lora("bert.encoder.layer.0.attention.q")]))
    base = open_base(base_file(tmp_path / "base" / "model.safetensors", {
        "encoder.layer.0.attention.q.weight": (OUT, IN),
        "encoder.layer.0.attention.q.bias": (OUT,),
    }))  # fmt: skip
    match = match_base_weights(adapter, base)
    assert not match.unmatched
    weight = match.weights["bert.encoder.layer.0.attention.q"]
    assert weight.key == "encoder.layer.0.attention.q.weight" and not weight.transpose


def test_base_with_an_extra_prefix_matches_by_unique_suffix(tmp_path: Path) -> None:
    adapter = load_adapter(peft_adapter(tmp_path, [lora("encoder.layer.0.q")]))
    base = open_base(
        base_file(tmp_path / "m.safetensors", {"bert.encoder.layer.0.q.weight": (OUT, IN)})
    )
    assert match_base_weights(adapter, base).weights["encoder.layer.0.q"].key == (
        "bert.encoder.layer.0.q.weight"
    )


def test_two_prefixed_copies_are_ambiguous(tmp_path: Path) -> None:
    adapter = load_adapter(peft_adapter(tmp_path, [lora("layer.0.q")]))
    base = open_base(base_file(tmp_path / "m.safetensors", {
        "a.layer.0.q.weight": (OUT, IN), "b.layer.0.q.weight": (OUT, IN),
    }))  # fmt: skip
    match = match_base_weights(adapter, base)
    assert match.unmatched and not match.weights


def test_sharded_index_reads_only_the_shards_it_needs(tmp_path: Path) -> None:
    adapter = load_adapter(peft_adapter(tmp_path, [lora("model.layers.1.q_proj")]))
    directory = sharded(tmp_path / "base", {
        "model-00001-of-00002.safetensors": {"model.layers.0.q_proj.weight": (OUT, IN)},
        "model-00002-of-00002.safetensors": {"model.layers.1.q_proj.weight": (OUT, IN)},
    })  # fmt: skip
    base = open_base(directory)
    assert base.index == directory / "model.safetensors.index.json"
    match = match_base_weights(adapter, base)
    weight = match.weights["model.layers.1.q_proj"]
    assert weight.file.name == "model-00002-of-00002.safetensors"
    assert list(base._headers) == [weight.file]  # the other shard's header was never read
    w = base.load(weight, out_features=OUT, in_features=IN)
    assert w.shape == (OUT, IN)


def test_index_file_itself_and_single_file_can_be_named(tmp_path: Path) -> None:
    directory = sharded(tmp_path / "base", {"a.safetensors": {"x.weight": (2, 2)}})
    assert open_base(directory / "model.safetensors.index.json").keys == ["x.weight"]
    assert open_base(directory / "a.safetensors").keys == ["x.weight"]


def test_gpt2_conv1d_is_transposed_by_shape_and_square_by_fan_in_fan_out(tmp_path: Path) -> None:
    layers = [lora("h.0.attn.c_attn", out=3 * IN, inp=IN), lora("h.0.attn.c_proj", out=IN, inp=IN)]
    base_path = base_file(tmp_path / "gpt2.safetensors", {
        "h.0.attn.c_attn.weight": (IN, 3 * IN), "h.0.attn.c_proj.weight": (IN, IN),
    })  # fmt: skip
    for fan_in_fan_out in (False, True):
        path = peft_adapter(tmp_path / str(fan_in_fan_out), layers, fan_in_fan_out=fan_in_fan_out)
        match = match_base_weights(load_adapter(path), open_base(base_path))
        assert match.weights["h.0.attn.c_attn"].transpose
        assert match.weights["h.0.attn.c_proj"].transpose is fan_in_fan_out
    stored = open_base(base_path)
    weight = match.weights["h.0.attn.c_attn"]
    w = stored.load(weight, out_features=3 * IN, in_features=IN)
    from safetensors.torch import load_file

    raw = load_file(str(base_path))["h.0.attn.c_attn.weight"].numpy()  # the library's decoding
    assert np.array_equal(w, raw.T)


def test_embedding_is_stored_vocab_by_dim(tmp_path: Path) -> None:
    vocab, dim = 30, 6
    adapter = load_adapter(
        peft_adapter(tmp_path, [lora("embed_tokens", out=dim, inp=vocab, embedding=True)])
    )
    base = open_base(base_file(tmp_path / "m.safetensors", {"embed_tokens.weight": (vocab, dim)}))
    weight = match_base_weights(adapter, base).weights["embed_tokens"]
    assert weight.transpose
    assert base.load(weight, out_features=dim, in_features=vocab).shape == (dim, vocab)


def test_kohya_names_match_underscored_base_keys(tmp_path: Path) -> None:
    tensors = {}
    for module, (out, inp) in {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (OUT, IN),
        "lora_unet_down_blocks_0_attentions_0_proj_in": (OUT, IN),
    }.items():
        tensors[f"{module}.lora_down.weight"] = torch.randn(R, inp)
        tensors[f"{module}.lora_up.weight"] = torch.randn(out, R)
        tensors[f"{module}.alpha"] = torch.tensor(1.0)
    save_file(tensors, str(tmp_path / "kohya.safetensors"))
    adapter = load_adapter(tmp_path / "kohya.safetensors")
    base = open_base(base_file(tmp_path / "base.safetensors", {
        "text_model.encoder.layers.0.self_attn.q_proj.weight": (OUT, IN),
        "down_blocks.0.attentions.0.proj_in.weight": (OUT, IN, 1, 1),  # a 1×1 conv
        "text_model.encoder.layers.0.self_attn.k_proj.weight": (OUT, IN),
    }))  # fmt: skip
    match = match_base_weights(adapter, base)
    assert not match.unmatched
    got = {name: w.key for name, w in match.weights.items()}
    assert got == {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (
            "text_model.encoder.layers.0.self_attn.q_proj.weight"
        ),
        "lora_unet_down_blocks_0_attentions_0_proj_in": "down_blocks.0.attentions.0.proj_in.weight",
    }


def test_unmatched_layers_give_one_clear_error(tmp_path: Path) -> None:
    adapter = load_adapter(
        peft_adapter(tmp_path, [lora("enc.0.q"), lora("enc.0.v"), lora("enc.1.q", inp=5)])
    )
    base = open_base(base_file(tmp_path / "m.safetensors", {
        "enc.0.q.weight": (OUT, IN), "enc.1.q.weight": (OUT, IN), "enc.0.k.weight": (OUT, IN),
    }))  # fmt: skip
    match = match_base_weights(adapter, base)
    reasons = dict(match.unmatched)
    assert set(reasons) == {"enc.0.v", "enc.1.q"}
    assert "no base weight" in reasons["enc.0.v"]
    assert "shape [12, 8]" in reasons["enc.1.q"] and "[12, 5]" in reasons["enc.1.q"]
    error = unmatched_error(base, match, layer_count=3)
    text = str(error)
    assert "2 of 3 adapted layers" in text and "enc.0.v" in text and "--base-partial" in text
    assert "\n" not in text


def test_quantised_base_weights_are_not_matched(tmp_path: Path) -> None:
    adapter = load_adapter(peft_adapter(tmp_path, [lora("q")]))
    path = tmp_path / "m.safetensors"
    save_file({"q.weight": torch.zeros(OUT, IN, dtype=torch.int8)}, str(path))
    [(name, why)] = match_base_weights(adapter, open_base(path)).unmatched
    assert name == "q" and "I8" in why


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no safetensors weights"),
        ({"pytorch_model.bin": b"x"}, "pickled checkpoints are never opened"),
        ({"a.safetensors": None, "b.safetensors": None}, "2 candidate checkpoints"),
    ],
)
def test_directories_without_one_usable_checkpoint(
    tmp_path: Path, files: dict[str, bytes | None], message: str
) -> None:
    directory = tmp_path / "base"
    directory.mkdir()
    for name, data in files.items():
        if data is None:
            base_file(directory / name, {"x.weight": (2, 2)})
        else:
            (directory / name).write_bytes(data)
    with pytest.raises(InputError, match=message):
        open_base(directory)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ("not json", "not valid JSON"),
        (json.dumps({"weight_map": ["x"]}), "no weight_map"),
        (json.dumps({"weight_map": {"x.weight": "../outside.safetensors"}}), "outside"),
        (json.dumps({"weight_map": {"x.weight": "/abs.safetensors"}}), "outside"),
        (json.dumps({"weight_map": {"x.weight": "missing.safetensors"}}), "missing"),
        (json.dumps({"weight_map": {"x.weight": "model.bin"}}), "pickled"),
        (json.dumps({"weight_map": {}}), "empty"),
    ],
)
def test_malformed_indexes_are_refused(tmp_path: Path, index: str, message: str) -> None:
    directory = tmp_path / "base"
    directory.mkdir()
    (directory / "model.safetensors.index.json").write_text(index)
    with pytest.raises(InputError, match=message):
        open_base(directory)


def test_index_naming_a_tensor_its_shard_lacks(tmp_path: Path) -> None:
    directory = tmp_path / "base"
    base_file(directory / "s.safetensors", {"other.weight": (OUT, IN)})
    index = {"weight_map": {"q.weight": "s.safetensors"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    adapter = load_adapter(peft_adapter(tmp_path, [lora("q")]))
    with pytest.raises(InputError, match=r"not in s\.safetensors"):
        match_base_weights(adapter, open_base(directory))


def test_pickle_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(InputError, match="never opened"):
        open_base(tmp_path / "model.pt")
    with pytest.raises(InputError, match="no such file"):
        open_base(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"not a \.safetensors"):
        open_base(tmp_path / "notes.txt")
