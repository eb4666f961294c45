"""``lora-audit compare`` end to end through the CLI."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource
from typer.testing import CliRunner

from lora_audit.cli import app

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[2] / "sample_adapters"
RUN = SAMPLES / "minilm-run"


def validate(report: dict[str, object]) -> None:
    def load(name: str) -> dict[str, object]:
        text = (resources.files("lora_audit") / "report" / "schema" / name).read_text("utf-8")
        return json.loads(text)  # type: ignore[no-any-return]

    inspect_schema, compare_schema = load("inspect.schema.json"), load("compare.schema.json")
    registry = Registry().with_resource(
        str(inspect_schema["$id"]), Resource.from_contents(inspect_schema)
    )
    jsonschema.Draft202012Validator(compare_schema, registry=registry).validate(report)


def test_checkpoint_and_its_successor() -> None:
    result = runner.invoke(
        app, ["compare", str(RUN / "checkpoint-40"), str(RUN / "checkpoint-80"), "-f", "json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    validate(report)
    assert report["kind"] == "compare" and report["top_k"] == 4
    assert report["summary"]["matched"] == 12 and not report["summary"]["only_in_a"]
    for layer in report["layers"]:
        assert 0 <= layer["left_overlap"] <= 1 and len(layer["left_angles"]) == layer["k"] == 4
    # one run, forty steps apart: the updates point the same way
    assert report["summary"]["cosine"] > 0.5


def test_different_ranks_and_layer_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    a, b = SAMPLES / "minilm-r16", SAMPLES / "minilm-r4-bf16"
    result = runner.invoke(app, ["compare", str(a), str(b), "--top-k", "2"])
    assert result.exit_code == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 100
    assert "16/4" in result.stdout and "only in A" in result.stdout
    as_json = runner.invoke(app, ["compare", str(a), str(b), "-k", "2", "-f", "json"])
    report = json.loads(as_json.stdout)
    validate(report)
    assert report["summary"]["matched"] == 18 and len(report["summary"]["only_in_a"]) == 19


@pytest.mark.parametrize(
    "args", [["--top-k", "0"], ["--format", "junit"], ["--plot", "x.jpg"], ["--bogus"]]
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = runner.invoke(
        app, ["compare", str(RUN / "checkpoint-10"), str(RUN / "checkpoint-20"), *args]
    )
    assert result.exit_code == 2 and result.stdout == ""


def test_missing_adapter_exits_3(tmp_path: Path) -> None:
    result = runner.invoke(app, ["compare", str(RUN / "checkpoint-10"), str(tmp_path / "nope")])
    assert result.exit_code == 3 and "nope" in result.stderr


def test_nan_factor_is_named(tmp_path: Path) -> None:
    import torch
    from factories import FakeAdapter, FakeLayer, write_peft

    b = torch.ones(6, 2)
    bad = b.clone()
    bad[0, 0] = float("nan")
    good = write_peft(tmp_path / "good", FakeAdapter([FakeLayer("x", b, torch.ones(2, 5))]))
    broken = write_peft(tmp_path / "bad", FakeAdapter([FakeLayer("x", bad, torch.ones(2, 5))]))
    result = runner.invoke(app, ["compare", str(good), str(broken)])
    assert result.exit_code == 3 and "NaN" in result.stderr and "lora_B" in result.stderr


def test_compare_format_enum_matches_renderers() -> None:
    from lora_audit.cli._options import CompareFormat
    from lora_audit.render import formats_for

    assert [f.value for f in CompareFormat] == [f.value for f in formats_for("compare")]
