"""``lora-audit trend`` end to end through the CLI."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from lora_audit.cli import app

runner = CliRunner()
SAMPLE_RUN = Path(__file__).resolve().parents[2] / "sample_adapters" / "minilm-run"


def schema() -> dict[str, object]:
    text = (resources.files("lora_audit") / "report" / "schema" / "trend.schema.json").read_text(
        "utf-8"
    )
    return json.loads(text)  # type: ignore[no-any-return]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    from checkpoints import write_checkpoint

    for i, step in enumerate((5, 50, 500, 5000)):
        write_checkpoint(tmp_path / "run" / f"checkpoint-{step}", i)
    return tmp_path / "run"


def test_sample_run_json_validates_in_step_order() -> None:
    given = [str(SAMPLE_RUN / f"checkpoint-{s}") for s in (80, 10, 40, 20)]
    result = runner.invoke(app, ["trend", *given, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, schema())
    assert [c["step"] for c in report["checkpoints"]] == [10, 20, 40, 80]
    assert report["settings"]["step_source"] == "name"
    assert len(report["layers"]) == 12
    assert all(len(layer["stable_rank"]) == 4 for layer in report["layers"])
    assert list(report) == sorted(report)


def test_run_directory_table_fits_100_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    result = runner.invoke(app, ["trend", str(SAMPLE_RUN)])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "checkpoint-80" in result.stdout and "steps 10–80" in result.stdout


def test_drift_exit_codes(run: Path) -> None:
    plain = runner.invoke(app, ["trend", str(run), "-f", "json"])
    assert plain.exit_code == 0, plain.stderr
    assert json.loads(plain.stdout)["status"] == "drift"
    strict = runner.invoke(app, ["trend", str(run), "--fail-on-drift"])
    assert strict.exit_code == 1
    assert "stable-rank-drift" in strict.stdout and "DRIFT" in strict.stdout
    lax = runner.invoke(app, ["trend", str(run), "--fail-on-drift", "--min-rise", "5"])
    assert lax.exit_code == 0 and "PASS" in lax.stdout
    short = runner.invoke(app, ["trend", str(run), "--fail-on-drift", "--window", "5"])
    assert short.exit_code == 0 and "none is flagged" in short.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--window", "1"],
        ["--min-rise", "-0.5"],
        ["--energy", "2"],
        ["--format", "junit"],
        ["--plot", "trend.gif"],
    ],
)
def test_usage_errors_exit_2(run: Path, args: list[str], tmp_path: Path) -> None:
    result = runner.invoke(app, ["trend", str(run), *args])
    assert result.exit_code == 2, result.stdout
    assert result.stdout == ""


def test_one_checkpoint_is_a_usage_error(run: Path) -> None:
    result = runner.invoke(app, ["trend", str(run / "checkpoint-5")])
    assert result.exit_code == 2 and "at least two checkpoints" in result.stderr


def test_unreadable_checkpoint_exits_3(run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "checkpoint-7"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    result = runner.invoke(app, ["trend", str(run / "checkpoint-5"), str(broken)])
    assert result.exit_code == 3
    assert "checkpoint-7" in result.stderr and result.stdout == ""


def test_output_file_and_plot(run: Path, tmp_path: Path) -> None:
    out, picture = tmp_path / "trend.json", tmp_path / "trend.png"
    result = runner.invoke(
        app, ["trend", str(run), "-f", "json", "-o", str(out), "--plot", str(picture)]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    jsonschema.validate(json.loads(out.read_text()), schema())
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trend_format_enum_matches_renderers() -> None:
    from lora_audit.cli._options import TrendFormat
    from lora_audit.render import formats_for

    assert [f.value for f in TrendFormat] == [f.value for f in formats_for("trend")]
