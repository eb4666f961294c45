"""``compress`` writes what the user named: a PEFT directory carries its model card over (with
a line saying what changed), and ``-o NAME.safetensors`` for a directory output is refused."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_audit import __version__
from lora_audit.cli import app

SAMPLE = Path(__file__).resolve().parents[2] / "sample_adapters" / "minilm-r4-bf16"
runner = CliRunner()


@pytest.fixture
def adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return Path(shutil.copytree(SAMPLE, tmp_path / "adapter"))


def compress(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["compress", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_model_card_is_carried_over_with_what_changed(adapter: Path, tmp_path: Path) -> None:
    card = (adapter / "README.md").read_bytes()
    code, out, err = compress(str(adapter), "-o", "small", "--energy", "0.9", "-f", "json")
    assert code == 0, err
    report = json.loads(out)
    written = (tmp_path / "small" / "README.md").read_bytes()
    assert written.startswith(card)  # byte for byte, front matter included
    added = written[len(card) :].decode("utf-8")
    note = added.strip("\n")
    assert note.startswith("*Compressed by lora-audit ") and note.endswith("*")
    assert "\n" not in note  # one line, its own paragraph:
    assert (written.decode("utf-8")).endswith(f"\n\n{note}\n")
    s = report["summary"]
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    ranks = sorted({layer["new_rank"] for layer in report["layers"]})
    assert f"lora-audit {__version__} on {today}" in added
    assert "`lora-audit compress --energy 0.9`" in added
    assert f"{s['truncated']} of {s['layer_count']} layers truncated" in added
    assert f"rank 4 → {ranks[0]}–{ranks[-1]}" in added
    assert f"{s['params']:,} → {s['params_after']:,} LoRA parameters" in added
    assert f"at least {s['min_energy_kept']:.2%} of its energy" in added
    assert sorted(p.name for p in (tmp_path / "small").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    # --force replaces an earlier output that holds the card (lora-audit wrote it)
    code, _, err = compress(str(adapter), "-o", "small", "--rank", "2", "--force")
    assert code == 0, err
    assert "`lora-audit compress --rank 2`" in (tmp_path / "small" / "README.md").read_text()


def test_no_card_in_the_input_means_none_in_the_output(adapter: Path, tmp_path: Path) -> None:
    (adapter / "README.md").unlink()
    assert compress(str(adapter), "-o", "small", "--rank", "2")[0] == 0
    assert not (tmp_path / "small" / "README.md").exists()


def test_a_linked_card_is_not_followed(adapter: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.md"
    secret.write_text("not the card")
    (adapter / "README.md").unlink()
    os.symlink(secret, adapter / "README.md")
    assert compress(str(adapter), "-o", "small", "--rank", "2")[0] == 0
    assert not (tmp_path / "small" / "README.md").exists()


@pytest.mark.parametrize("given", ["dir", "file"])
@pytest.mark.parametrize("name", ["x.safetensors", "out/X.SafeTensors"])
def test_a_file_name_for_a_directory_output_is_refused(
    adapter: Path, tmp_path: Path, given: str, name: str
) -> None:
    source = adapter if given == "dir" else adapter / "adapter_model.safetensors"
    code, out, err = compress(str(source), "-o", name, "--energy", "0.9")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert f"-o {name}: a PEFT adapter with adapter_config.json is written as a directory" in err
    assert "PeftModel.from_pretrained" in err
    assert f"pass a directory, e.g. -o {name.rsplit('.', 1)[0]}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert compress(str(source), "-o", name, "--dry-run", "--rank", "2")[0] == 0  # nothing written
