"""Telling a full model from an adapter, and matching a tuned checkpoint to its base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_audit.errors import InputError
from lora_audit.formats.full_model import is_full_model, open_pair


def _model(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"))
    return path


def _weights(seed: int, prefix: str = "") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}encoder.layer.0.query.weight": rng.standard_normal((8, 6)).astype(np.float32),
        f"{prefix}encoder.layer.0.query.bias": rng.standard_normal(8).astype(np.float32),
        f"{prefix}embeddings.word_embeddings.weight": rng.standard_normal((10, 6)).astype(
            np.float32
        ),
        f"{prefix}conv.weight": rng.standard_normal((4, 3, 2, 2)).astype(np.float32),
        f"{prefix}embeddings.position_ids": np.arange(5, dtype=np.int64).reshape(1, 5),
    }


def test_full_model_or_adapter(tmp_path: Path) -> None:
    full = _model(tmp_path / "full", _weights(0))
    assert is_full_model(full) and is_full_model(full / "model.safetensors")
    lora = tmp_path / "lora"
    lora.mkdir()
    save_file(
        {"base_model.model.q.lora_A.weight": np.zeros((2, 6), np.float32)},
        str(lora / "adapter_model.safetensors"),
    )
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert not is_full_model(lora)
    kohya = _model(
        tmp_path / "kohya", {"lora_unet_a.lora_down.weight": np.zeros((2, 3), np.float32)}
    )
    assert not is_full_model(kohya)
    for i, key in enumerate(
        [
            "model.layers.0.self_attn.q_proj.lora_a",  # mlx-lm
            "unet.down.attentions.0.to_q.lora.down.weight",  # diffusers
            "double_blocks.0.processor.qkv_lora1.down.weight",  # XLabs
            "lycoris_a.hada_w1_a",
        ]
    ):
        single = tmp_path / f"adapter{i}.safetensors"
        save_file({key: np.zeros((2, 3), np.float32)}, str(single))
        assert not is_full_model(single), key
    assert not is_full_model(tmp_path / "missing")
    with pytest.raises(InputError, match="this is an adapter"):
        open_pair(full, kohya)


def test_pairing_kinds_prefixes_and_leftovers(tmp_path: Path) -> None:
    base = _model(tmp_path / "base", _weights(0))
    tuned_weights = _weights(1, prefix="bert.")
    tuned_weights["classifier.weight"] = np.zeros((2, 6), np.float32)
    tuned_weights["bert.embeddings.word_embeddings.weight"] = np.zeros((12, 6), np.float32)
    tuned = _model(tmp_path / "tuned", tuned_weights)
    _, _, pairing = open_pair(base, tuned)
    kinds = {p.base_key: p.kind for p in pairing.pairs}
    assert kinds == {
        "encoder.layer.0.query.weight": "linear",
        "encoder.layer.0.query.bias": "vector",
        "conv.weight": "conv",
    }
    conv = next(p for p in pairing.pairs if p.kind == "conv")
    assert conv.matrix_shape == (4, 12)
    assert pairing.only_tuned == ("classifier.weight",)
    reasons = dict(pairing.mismatched)
    assert "shape [12, 6] here" in reasons["bert.embeddings.word_embeddings.weight"]
    assert "not a float tensor" in reasons["bert.embeddings.position_ids"]
    assert pairing.only_base == ()


def test_nothing_in_common_is_refused(tmp_path: Path) -> None:
    base = _model(tmp_path / "base", {"a.weight": np.zeros((2, 2), np.float32)})
    tuned = _model(tmp_path / "tuned", {"b.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(InputError, match="none of its 1 tensors is in --base"):
        open_pair(base, tuned)
    with pytest.raises(InputError, match=r"TUNED .*no such file"):
        open_pair(base, tmp_path / "nope")
