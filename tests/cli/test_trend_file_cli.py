"""``lora-audit trend FILE.json``: a trend report read back, checked, and judged again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.report.schema_bundle import load

runner = CliRunner()


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """``trend -f json -o`` of a four-checkpoint run whose spectra keep spreading."""
    from checkpoints import write_checkpoint

    for i, step in enumerate((5, 50, 500, 5000)):
        write_checkpoint(tmp_path / "run" / f"checkpoint-{step}", i)
    out = tmp_path / "trend.json"
    result = runner.invoke(app, ["trend", str(tmp_path / "run"), "-f", "json", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    return out


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_read_back_equals_the_audited_trend(saved: Path) -> None:
    result = runner.invoke(app, ["trend", str(saved), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    again, first = json.loads(result.stdout), read(saved)
    jsonschema.validate(again, load("trend.schema.json"))
    assert again == first  # same window, same rise: the same report, finding for finding
    assert again["status"] == "drift" and again["findings"]


def test_drift_is_judged_again_with_this_runs_window_and_rise(saved: Path) -> None:
    strict = runner.invoke(app, ["trend", str(saved), "--fail-on-drift"])
    assert strict.exit_code == 1 and "DRIFT" in strict.stdout
    lax = runner.invoke(app, ["trend", str(saved), "--fail-on-drift", "--min-rise", "5"])
    assert lax.exit_code == 0 and "PASS" in lax.stdout
    short = runner.invoke(app, ["trend", str(saved), "-f", "json", "--window", "5"])
    report = json.loads(short.stdout)
    assert report["settings"]["window"] == 5 and report["status"] == "pass"
    assert not any(layer["drift"] for layer in report["layers"])
    notes = [w for w in report["warnings"] if "drift is judged" in w]
    assert notes == ["drift is judged over the last 5 checkpoints; 4 given, so none is flagged"]
    assert report["checkpoints"] == read(saved)["checkpoints"]


def test_another_energy_is_refused_the_files_is_accepted(saved: Path) -> None:
    other = runner.invoke(app, ["trend", str(saved), "--energy", "0.9"])
    assert other.exit_code == 2 and "τ = 0.99, not 0.9" in other.stderr
    same = runner.invoke(app, ["trend", str(saved), "--energy", "0.99"])
    assert same.exit_code == 0, same.stderr


def test_checkpoint_options_and_writing_over_the_file_are_refused(saved: Path) -> None:
    alpha = runner.invoke(app, ["trend", str(saved), "--alpha", "8"])
    assert alpha.exit_code == 2 and "not to a trend file" in alpha.stderr
    before = saved.read_bytes()
    over = runner.invoke(app, ["trend", str(saved), "-f", "json", "-o", str(saved), "--force"])
    assert over.exit_code != 0 and saved.read_bytes() == before


def broken(data: dict[str, Any], how: str) -> dict[str, Any]:
    if how == "kind":
        data["kind"] = "inspect"
    elif how == "major":
        data["schema_version"] = "3.0"
    elif how == "missing":
        del data["checkpoints"][0]["mean_stable_rank"]
    elif how == "type":
        data["checkpoints"][1]["step"] = "50"
    elif how == "bool":
        data["layers"][0]["rank"] = True
    elif how == "series":
        data["layers"][0]["stable_rank"].pop()
    elif how == "order":
        data["checkpoints"][0]["step"] = 10**6
    elif how == "unit":
        data["settings"]["step_unit"] = "minute"
    return data


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("kind", "not a trend report (kind 'inspect')"),
        ("major", "schema_version '3.0' is not 2.x"),
        ("missing", "key 'checkpoints[0].mean_stable_rank' is missing"),
        ("type", "checkpoints[1].step must be int, not '50'"),
        ("bool", "layers[0].rank must be int, not True"),
        ("series", "has series of [3, 4], not 4 values"),
        ("order", "not in increasing step order"),
        ("unit", "unknown step source/unit"),
    ],
)
def test_a_file_that_is_not_a_trend_report_is_refused_by_name(
    saved: Path, tmp_path: Path, how: str, said: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken(read(saved), how)))
    result = runner.invoke(app, ["trend", str(bad)])
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert said in result.stderr and result.stdout == ""


def test_unknown_keys_of_a_later_minor_version_are_ignored(saved: Path, tmp_path: Path) -> None:
    data = read(saved)
    data["schema_version"], data["new_field"] = "2.99", {"x": 1}
    data["checkpoints"][0]["new_number"] = 1.5
    later = tmp_path / "later.json"
    later.write_text(json.dumps(data))
    result = runner.invoke(app, ["trend", str(later), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["checkpoints"] == read(saved)["checkpoints"]


def test_the_callbacks_folder_named_instead_of_its_file_says_which_file(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "lora-audit"
    folder.mkdir(parents=True)
    (folder / "trend.json").write_text("{}")
    result = runner.invoke(app, ["trend", str(folder)])
    assert result.exit_code == 2
    assert f"name the file: {folder / 'trend.json'}" in result.stderr
