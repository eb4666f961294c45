"""``inspect --base BASE TUNED`` and ``extract`` end to end: routing, schemas, table, errors."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.report import schema_bundle
from lora_audit.report.common import SCHEMA_VERSION

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_finetune import full_finetune

runner = CliRunner()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return full_finetune(tmp_path_factory.mktemp("ft"), steps=2)


def test_inspect_of_a_full_model_validates_and_renders(pair: tuple[Path, Path]) -> None:
    base, tuned = pair
    result = runner.invoke(
        app, ["inspect", str(tuned), "--base", str(base), "-f", "json", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, schema_bundle.load("inspect-full.schema.json"))
    assert report["kind"] == "inspect-full" and report["schema_version"] == SCHEMA_VERSION
    assert len(report["layers"]) == 7 and report["tensors"]
    table = runner.invoke(app, ["inspect", str(tuned), "--base", str(base), "-e", "0.9"])
    assert table.exit_code == 0, table.stderr
    assert "sr(W) → sr(W+ΔW)" in table.stdout and "k@0.9" in table.stdout
    assert "embeddings" in table.stdout and "vectors" in table.stdout


def test_a_full_model_without_base_is_not_read_as_an_adapter(pair: tuple[Path, Path]) -> None:
    result = runner.invoke(app, ["inspect", str(pair[1])])
    assert result.exit_code == 3 and "looks like a full model" in result.stderr
    assert "to audit this model as a full fine-tune, add --base BASE" in result.stderr


def test_extract_writes_peft_and_a_valid_report(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = pair
    out = tmp_path / "lora"
    args = ["extract", str(base), str(tuned), "-o", str(out), "--energy", "0.9", "-f", "json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, schema_bundle.load("extract.schema.json"))
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    audited = runner.invoke(app, ["inspect", str(out), "-f", "json"])  # lora-audit reads it back
    assert audited.exit_code == 0, audited.stderr
    ranks = {x["name"]: x["rank"] for x in json.loads(audited.stdout)["layers"]}
    assert ranks == {x["name"]: x["rank"] for x in report["layers"]}
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.stderr
    over = runner.invoke(app, ["extract", str(base), str(tuned), "-o", str(tuned), "--rank", "2"])
    assert over.exit_code == 2 and "overwrite the input" in over.stderr
    both = runner.invoke(
        app,
        ["extract", str(base), str(tuned), "-o", str(tmp_path / "x"), "--rank", "2", "-e", "0.9"],
    )
    assert both.exit_code == 2 and "exactly one of --energy and --rank" in both.stderr
