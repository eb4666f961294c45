"""No tensor named like a LoRA factor passes through unread.

The count is the file's marker keys minus the keys whose bytes the tensor source read (recorded
where the bytes are read, not what a reader says) minus the extras the report states. It is
zero for every writer's file (:mod:`writers`) and every sample after an audit; a dropped layer
and planted tensors show the error and the warning.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner
from writers import builders

from lora_audit.cli import app
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.engine.device import EngineOptions
from lora_audit.errors import InputError
from lora_audit.formats import load_adapter
from lora_audit.formats.accounted import (
    check_accounted,
    marker_keys,
    read_keys,
    stored_keys,
    unread,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted(
    p.relative_to(ROOT)
    for p in [*ROOT.glob("sample_adapters/**/*.safetensors"), *ROOT.glob("src/**/*.safetensors")]
)
OPTIONS = AuditOptions(engine=EngineOptions(device="cpu"))
PEFT_SAMPLE = ROOT / "sample_adapters" / "minilm-r16"


def audited_unread(path: Path) -> tuple[int, list[str]]:
    """How many marker keys the file holds, and those left unread after a full audit."""
    adapter = load_adapter(path)
    messages: list[str] = []
    inspect_adapter(adapter, options=OPTIONS, warn=messages.append)
    keys = stored_keys(adapter)
    assert keys is not None
    return len(marker_keys(keys)), unread(adapter, warned=messages)


@pytest.mark.parametrize("name", sorted(builders()))
def test_every_writers_file_is_read_in_full(tmp_path: Path, name: str) -> None:
    markers, left = audited_unread(builders()[name](tmp_path / name))
    assert markers > 0
    assert left == []


@pytest.mark.parametrize("sample", SAMPLES, ids=str)
def test_every_sample_is_read_in_full(sample: Path) -> None:
    markers, left = audited_unread(ROOT / sample)
    assert markers > 0
    assert left == []


def test_reads_are_recorded_where_the_bytes_are_read() -> None:
    """Loading reads no factor (the engine reads lazily); the audit reads every one."""
    adapter = load_adapter(PEFT_SAMPLE)
    factors = {k for layer in adapter.layers for k in (layer.a_key, layer.b_key)}
    assert read_keys(adapter) == frozenset()
    assert len(unread(adapter)) == len(factors)
    inspect_adapter(adapter, options=OPTIONS)
    assert factors <= (read_keys(adapter) or set())
    assert unread(adapter) == []


def test_a_layer_a_reader_drops_is_refused_and_counted() -> None:
    """A reader that leaves a layer out is caught on load, and by the read count after."""
    adapter = load_adapter(PEFT_SAMPLE)
    dropped = adapter.layers[0]
    short = dataclasses.replace(adapter, layers=adapter.layers[1:])
    with pytest.raises(InputError, match=r"2 tensor\(s\) named like LoRA factors") as info:
        check_accounted(short)
    assert dropped.a_key in str(info.value)
    inspect_adapter(short, options=OPTIONS)  # a narrowed adapter is still audited
    assert sorted(unread(short)) == sorted([dropped.a_key, dropped.b_key])


def test_a_key_a_layer_claims_but_the_audit_never_reads_is_refused() -> None:
    """What a reader says a layer is made of is checked against what the audit read."""
    adapter = load_adapter(PEFT_SAMPLE)
    first, second = adapter.layers[:2]
    claims = dataclasses.replace(first, keys={"mid": second.a_key})  # a plain layer: unread
    faked = dataclasses.replace(adapter, layers=(claims,))
    with pytest.raises(InputError, match="not read by the audit") as info:
        inspect_adapter(faked, options=OPTIONS)
    assert repr(second.a_key) in str(info.value)


def _planted_peft(tmp_path: Path, key: str) -> Path:
    directory = tmp_path / "planted"
    shutil.copytree(PEFT_SAMPLE, directory)
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    tensors[key] = np.ones((4, 4), np.float32)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    return directory


@pytest.mark.parametrize(
    "role", ["lora_mid.weight", "alpha", "lora_up.weight", "lora.down.weight", "dora_scale"]
)
def test_a_planted_factor_is_refused_by_name(tmp_path: Path, role: str) -> None:
    key = f"base_model.model.bert.encoder.layer.0.attention.self.query.{role}"
    directory = _planted_peft(tmp_path, key)
    with pytest.raises(InputError, match=r"named like LoRA factors") as info:
        load_adapter(directory)
    assert repr(key) in str(info.value)
    result = CliRunner().invoke(app, ["inspect", str(directory)])
    assert result.exit_code != 0
    assert key in result.stderr and result.stdout == ""


def test_a_planted_factor_in_a_kohya_file_is_refused(tmp_path: Path) -> None:
    """The kohya reader used to list unknown keys in a warning and audit the rest."""
    source = ROOT / "sample_adapters" / "sd" / "kohya-lora.safetensors"
    tensors = load_file(str(source))
    tensors["lora_unet_mid_block_attentions_0_proj_in.lora_magnitude_vector"] = np.ones(4)
    path = tmp_path / "planted.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(InputError, match=r"proj_in\.lora_magnitude_vector"):
        load_adapter(path)


def test_non_low_rank_modules_are_named_in_a_warning_in_every_format(tmp_path: Path) -> None:
    """LyCORIS full-diff modules are stored legitimately: named on stderr and in the JSON."""
    rng = np.random.default_rng(0)
    m = "lora_unet_mid_block_attentions_0_proj_in"
    tensors = {
        f"{m}.lora_down.weight": rng.standard_normal((4, 16)).astype(np.float32),
        f"{m}.lora_up.weight": rng.standard_normal((12, 4)).astype(np.float32),
        f"{m}.alpha": np.array(4.0, np.float32),
        "lora_unet_conv_in.diff": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "lora_unet_conv_in.alpha": np.array(1.0, np.float32),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    runner = CliRunner()
    table = runner.invoke(app, ["inspect", str(path)])
    assert table.exit_code == 0, table.output
    assert "'lora_unet_conv_in.diff'" in table.stderr and "not audited" in table.stderr
    assert "'lora_unet_conv_in.alpha'" in table.stderr
    as_json = runner.invoke(app, ["inspect", "--format", "json", str(path)])
    warnings = json.loads(as_json.stdout)["warnings"]
    assert any("'lora_unet_conv_in.diff'" in w and "not audited" in w for w in warnings)
    assert audited_unread(path)[1] == []
