"""Every shipped JSON Schema validates real reports on its own: no registry, no network.

``check.schema.json`` and ``compare.schema.json`` carry the inspect schema bundled under
``$defs`` (:mod:`lora_audit.report.schema_bundle`); ``check-jsonschema --schemafile`` is run
on real command output exactly as a user would run it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.report import schema_bundle

SAMPLES = Path(__file__).resolve().parents[2] / "sample_adapters"
SCHEMAS = ("inspect", "check", "compare", "trend", "compress")
runner = CliRunner()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _ids(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$id"), str):
            yield node["$id"].rsplit("/", 1)[-1]
        for value in node.values():
            yield from _ids(value)
    elif isinstance(node, list):
        for value in node:
            yield from _ids(value)


def test_bundled_inspect_copies_are_in_sync_with_inspect_schema() -> None:
    folder = schema_bundle.schema_dir()
    for name, text in schema_bundle.expected_files(folder).items():
        assert (folder / name).read_text(encoding="utf-8") == text, (
            f"{name} is stale: run python -m lora_audit.report.schema_bundle"
        )
    assert schema_bundle.main(["--check"]) == 0


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_reference_resolves_inside_the_file(name: str) -> None:
    schema = schema_bundle.load(f"{name}.schema.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    embedded = set(_ids(schema))
    for ref in _refs(schema):
        target = ref.split("#", 1)[0]
        assert target == "" or target in embedded, f"{name}: $ref {ref} leaves the file"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real ``--format json`` output of every command, each in its own file."""
    root = tmp_path_factory.mktemp("reports")
    r16, r4 = str(SAMPLES / "minilm-r16"), str(SAMPLES / "minilm-r4-bf16")
    run = [str(SAMPLES / "minilm-run" / f"checkpoint-{s}") for s in (10, 20, 40, 80)]
    commands = {
        "inspect": ["inspect", r16],
        "check": ["check", r16, r4, "--no-config", "--max-waste", "0.1"],
        "compare": ["compare", r16, r4],
        "trend": ["trend", *run],
        "compress": ["compress", r4, "-o", str(root / "small"), "--energy", "0.9"],
    }
    files = {}
    for name, args in commands.items():
        result = runner.invoke(app, [*args, "--format", "json"])
        assert result.exit_code in (0, 1), result.output
        files[name] = root / f"{name}.json"
        files[name].write_text(result.stdout, encoding="utf-8")
    return files


@pytest.mark.parametrize("name", SCHEMAS)
def test_plain_jsonschema_validates_real_output_with_the_file_alone(
    name: str, outputs: dict[str, Path]
) -> None:
    schema = json.loads((schema_bundle.schema_dir() / f"{name}.schema.json").read_text())
    report = json.loads(outputs[name].read_text())
    jsonschema.Draft202012Validator(schema).validate(report)  # no registry given
    broken = {**report, "schema_version": 2}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(broken)


@pytest.mark.parametrize("name", SCHEMAS)
def test_check_jsonschema_validates_real_output(
    name: str, outputs: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("check_jsonschema")
    schema = schema_bundle.schema_dir() / f"{name}.schema.json"

    def check(instance: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema)]
        return subprocess.run(
            [*command, str(instance)], capture_output=True, text=True, timeout=120
        )

    passed = check(outputs[name])
    assert passed.returncode == 0, passed.stdout + passed.stderr
    broken = tmp_path / "broken.json"
    report = json.loads(outputs[name].read_text())
    report.pop("adapters" if name == "check" else "tool")
    broken.write_text(json.dumps(report))
    assert check(broken).returncode == 1
