"""Refusals that name the real cause: a full model's directory, an output directory that
does not exist, a write that fails for a reason the user can act on."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_audit.errors import ExitCode, InputError, OutputError
from lora_audit.formats import load_adapter
from lora_audit.formats.output_guard import OutputGuard, OutputTarget, _write_error


def _weights(path: Path) -> None:
    save_file({"model.layers.0.self_attn.q_proj.weight": np.zeros((4, 4), np.float32)}, str(path))


def _refusal(path: Path) -> str:
    with pytest.raises(InputError) as info:
        load_adapter(path)
    assert info.value.exit_code == ExitCode.INPUT
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "files",
    [
        ["config.json", "model.safetensors"],
        ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
        ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
        ["config.json", "pytorch_model.bin"],
        ["config.json", "model.safetensors.index.json", "model-00001-of-00001.safetensors"],
    ],
)
def test_a_full_model_directory_says_so_and_what_to_pass(tmp_path: Path, files: list[str]) -> None:
    model = tmp_path / "Llama-tiny"
    model.mkdir()
    for name in files:
        if name.endswith(".safetensors"):
            _weights(model / name)
        elif name.endswith(".json"):
            (model / name).write_text(json.dumps({"model_type": "llama", "weight_map": {}}))
        else:
            (model / name).write_bytes(b"\x80\x04")  # a pickle: never opened
    message = _refusal(model)
    assert "looks like a full model" in message and "not a LoRA adapter" in message
    assert "adapter_config.json" in message and f"--base {model}" in message
    assert "candidate adapters" not in message and "pickle" not in message


def test_an_adapter_beside_model_files_is_still_read(tmp_path: Path) -> None:
    """adapter_config.json marks an adapter, whatever else the directory holds."""
    from factories import FakeAdapter, FakeLayer, planted_factors, write_peft

    b, a = planted_factors(out=8, inp=6, rank=2, spectrum=np.array([2.0, 1.0]), seed=0)
    write_peft(tmp_path / "ad", FakeAdapter([FakeLayer("model.layers.0.q_proj", b, a)]))
    (tmp_path / "ad" / "config.json").write_text("{}")
    _weights(tmp_path / "ad" / "model.safetensors")
    assert len(load_adapter(tmp_path / "ad").layers) == 1


def test_an_output_in_a_missing_directory_says_the_directory_is_missing(tmp_path: Path) -> None:
    guard = OutputGuard()
    target = tmp_path / "missing" / "dir" / "x.json"
    with pytest.raises(OutputError) as info:
        guard.plan(target, role="--output")
    message = str(info.value)
    assert info.value.exit_code == ExitCode.INPUT
    assert f"the directory {target.parent} does not exist" in message
    assert f"mkdir -p {target.parent}" in message and "disk space" not in message


def test_an_output_below_a_file_says_it_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputError, match="afile is not a directory"):
        OutputGuard().plan(tmp_path / "afile" / "x.json", role="--plot")


def test_an_adapter_output_may_create_its_directory(tmp_path: Path) -> None:
    target = OutputGuard().plan(tmp_path / "new" / "out", role="--output", adapter=True)
    assert target.path == (tmp_path / "new" / "out").resolve()


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EACCES, "you may not write there"),
        (errno.EROFS, "read-only"),
        (errno.EIO, "check free disk space and write permission"),
    ],
)
def test_a_failed_write_names_its_cause(tmp_path: Path, code: int, needle: str) -> None:
    target = OutputTarget(
        role="--output",
        given=Path("x.json"),
        path=tmp_path / "x.json",
        kind="file",
        special=False,
        replace=False,
    )
    error = _write_error(target, OSError(code, "planted"))
    assert str(error).startswith("x.json: cannot write: planted — ") and needle in str(error)
