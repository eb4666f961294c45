"""Files lora-audit cannot audit are refused by the name of what they are, never misread.

Each file is made by its writer's own code where it installs (PEFT 0.21, lycoris-lora 4.1,
transformers, ``torch.save``); the refusal must name the format and say what to do, and must
never call a valid file of another format "not a valid safetensors file".
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lora_audit.errors import InputError
from lora_audit.formats import load_adapter


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(16, 16)
        self.v_proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v_proj(self.q_proj(x))


def _error(path: Path) -> str:
    with pytest.raises(InputError) as info:
        load_adapter(path)
    message = str(info.value)
    assert "\n" not in message
    assert "valid safetensors" not in message
    return message


@pytest.mark.parametrize(
    ("algo", "name"),
    [
        ("glora", "LyCORIS GLoRA"),
        ("full", "LyCORIS full (diff)"),
        ("ia3", "LyCORIS IA3"),
        ("diag-oft", "LyCORIS OFT/BOFT"),
        ("boft", "LyCORIS OFT/BOFT"),
    ],
)
def test_lycoris_methods_that_are_not_low_rank(tmp_path: Path, algo: str, name: str) -> None:
    lycoris = pytest.importorskip("lycoris")
    lycoris.LycorisNetwork.apply_preset({"target_name": ["q_proj", "v_proj"]})
    net = lycoris.create_lycoris(Tiny(), 1.0, linear_dim=4, linear_alpha=2, algo=algo)
    net.apply_to()
    path = tmp_path / f"{algo}.safetensors"
    net.save_weights(str(path), torch.float32, {})
    message = _error(path)
    assert name in message and "not stored as low-rank factors" in message


def _peft_configs() -> list[tuple[str, object]]:
    peft = pytest.importorskip("peft")
    targets = ["q_proj", "v_proj"]
    return [
        ("IA3", peft.IA3Config(target_modules=targets, feedforward_modules=["v_proj"])),
        ("OFT", peft.OFTConfig(r=0, oft_block_size=4, target_modules=targets)),
        ("BOFT", peft.BOFTConfig(boft_block_size=4, target_modules=targets)),
        ("VeRA", peft.VeraConfig(r=4, target_modules=targets)),
        ("FourierFT", peft.FourierFTConfig(n_frequency=8, target_modules=targets)),
        ("HRA", peft.HRAConfig(r=2, target_modules=targets)),
        ("MiSS", peft.MissConfig(r=2, target_modules=targets)),
        ("VB-LoRA", peft.VBLoRAConfig(r=2, target_modules=targets, vector_length=4, num_vectors=8)),
        ("RandLoRA", peft.RandLoraConfig(r=2, target_modules=targets)),
        ("SHiRA", peft.ShiraConfig(r=2, target_modules=targets)),
        ("C3A", peft.C3AConfig(block_size=4, target_modules=targets)),
        ("LN tuning", peft.LNTuningConfig(target_modules=targets)),
    ]


@pytest.mark.parametrize("index", range(12))
def test_peft_methods_that_are_not_lora(
    tmp_path: Path, index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    peft = pytest.importorskip("peft")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))  # BOFT tries a build
    name, config = _peft_configs()[index]
    model = peft.get_peft_model(Tiny(), config)
    model.save_pretrained(str(tmp_path / "ad"))
    by_config = _error(tmp_path / "ad")
    assert config.peft_type.value in by_config  # type: ignore[attr-defined]
    (tmp_path / "ad" / "adapter_config.json").unlink()
    by_keys = _error(tmp_path / "ad" / "adapter_model.safetensors")
    assert name in by_keys and "(PEFT) adapter" in by_keys
    assert "not stored as low-rank factors" in by_keys


def _run_recipe(message: str) -> None:
    """Run the conversion command the refusal's hint gives."""
    command = re.search(r"python -c (\".*?\") and audit", message)
    assert command is not None, message
    code = shlex.split(command.group(1))[0]
    exec(compile(code, "<recipe>", "exec"), {})  # what `python -c` would run, in-process


def test_kohya_pickle_is_refused_with_a_recipe_that_works(tmp_path: Path) -> None:
    path = tmp_path / "style.pt"
    tensors = {
        "lora_unet_x.lora_down.weight": torch.randn(2, 8),
        "lora_unet_x.lora_up.weight": torch.randn(6, 2),
        "lora_unet_x.alpha": torch.tensor(2.0),
    }
    torch.save(tensors, path)
    message = _error(path)
    assert "torch.save" in message and "never opened" in message
    _run_recipe(message)
    converted = load_adapter(tmp_path / "style.safetensors")
    assert converted.format == "kohya" and converted.layers[0].name == "lora_unet_x"


def test_peft_bin_recipe_writes_the_file_beside_the_config(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(Tiny(), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(str(tmp_path / "ad"), safe_serialization=False)
    assert (tmp_path / "ad" / "adapter_model.bin").is_file()
    message = _error(tmp_path / "ad")
    _run_recipe(message)
    converted = load_adapter(tmp_path / "ad")
    assert converted.format == "peft" and converted.config.get("r") == 2


def test_a_pickle_named_safetensors_is_called_a_pickle(tmp_path: Path) -> None:
    path = tmp_path / "lora.safetensors"
    torch.save({"x": torch.ones(2)}, path)
    assert "pickle" in _error(path) or "torch.save" in _error(path)


def test_a_full_model_suggests_base(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    transformers.BertModel(config).save_pretrained(str(tmp_path / "model"))
    message = _error(tmp_path / "model")
    assert "full model" in message and "--base" in message


def test_legacy_llama_cpp_lora(tmp_path: Path) -> None:
    path = tmp_path / "ggml-adapter-model.bin"
    path.write_bytes(b"algg" + b"\x01\x00\x00\x00" + bytes(32))
    message = _error(path)
    assert "ggla" in message and "convert_lora_to_gguf.py" in message


def test_plain_lora_is_still_read(tmp_path: Path) -> None:
    """The diagnosis never refuses what a reader reads."""
    path = tmp_path / "k.safetensors"
    save_file(
        {
            "lora_unet_x.lora_down.weight": torch.randn(2, 8),
            "lora_unet_x.lora_up.weight": torch.randn(6, 2),
        },
        str(path),
    )
    assert load_adapter(path).format == "kohya"


@pytest.mark.parametrize("header_bytes", [0x0580, 0x0280, 0x0480])
def test_safetensors_whose_header_length_looks_like_a_pickle(
    tmp_path: Path, header_bytes: int
) -> None:
    """A header length of 0x0580 starts with the bytes of a protocol-5 pickle: still read."""
    path = tmp_path / "k.safetensors"
    base = {
        "lora_unet_x.lora_down.weight": torch.randn(2, 8),
        "lora_unet_x.lora_up.weight": torch.randn(6, 2),
    }
    save_file(base, str(path), metadata={"pad": ""})
    size = int.from_bytes(path.read_bytes()[:8], "little")
    save_file(base, str(path), metadata={"pad": "x" * (header_bytes - size)})
    assert path.read_bytes()[:2] == header_bytes.to_bytes(2, "little")
    assert load_adapter(path).format == "kohya"
