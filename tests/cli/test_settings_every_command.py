"""The settings file applies to every command: defaults < file < flags, and the report says
which file set them (``lora-audit.toml`` or ``[tool.lora-audit]`` in ``pyproject.toml``)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from check_adapters import write_lean, write_wasteful
from typer.testing import CliRunner

from lora_audit.cli import app

runner = CliRunner()

# The wasteful adapter: r=16, spectrum (5, 1). At τ=0.99 each layer needs k=2; at τ=0.9, k=1.
WASTE_AT_099 = 14 / 16
WASTE_AT_090 = 15 / 16


@pytest.fixture(autouse=True)
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository root (``.git``) with a wasteful adapter; the tests run in it."""
    (tmp_path / ".git").mkdir()
    write_wasteful(tmp_path / "wasteful")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    return tmp_path


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def json_of(*args: str) -> dict:  # type: ignore[type-arg]
    code, out, err = run(*args, "-f", "json")
    assert code in (0, 1), err
    return json.loads(out)  # type: ignore[no-any-return]


def _schema(name: str) -> dict:  # type: ignore[type-arg]
    text = (resources.files("lora_audit") / "report" / "schema" / name).read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("lora-audit.toml", "energy = 0.9\n"),
        ("pyproject.toml", "[project]\nname = 'x'\n\n[tool.lora-audit]\nenergy = 0.9\n"),
    ],
)
def test_inspect_and_check_report_the_same_waste(repo: Path, name: str, text: str) -> None:
    (repo / name).write_text(text)
    inspected = json_of("inspect", "wasteful")
    checked = json_of("check", "wasteful")
    assert inspected["settings"]["energy"] == checked["policy"]["energy"] == 0.9
    assert inspected["settings"]["settings_file"] == name
    assert checked["policy_file"] == name
    assert checked["adapters"][0]["settings"]["settings_file"] == name
    waste = inspected["summary"]["wasted_fraction"]
    assert waste == checked["adapters"][0]["summary"]["wasted_fraction"]
    assert waste == pytest.approx(WASTE_AT_090)
    jsonschema.validate(inspected, _schema("inspect.schema.json"))


def test_defaults_then_file_then_flags(repo: Path) -> None:
    assert json_of("inspect", "wasteful")["summary"]["wasted_fraction"] == pytest.approx(
        WASTE_AT_099
    )
    (repo / "lora-audit.toml").write_text("energy = 0.9\ncoverage = 0.5\n")
    from_file = json_of("inspect", "wasteful")["settings"]
    assert (from_file["energy"], from_file["coverage"]) == (0.9, 0.5)
    flagged = json_of("inspect", "wasteful", "-e", "0.99", "--coverage", "1")
    assert (flagged["settings"]["energy"], flagged["settings"]["coverage"]) == (0.99, 1.0)
    assert flagged["summary"]["wasted_fraction"] == pytest.approx(WASTE_AT_099)
    assert flagged["settings"]["settings_file"] == "lora-audit.toml", "the file was still read"
    bare = json_of("inspect", "wasteful", "--no-config")["settings"]
    assert (bare["energy"], bare["coverage"], bare["settings_file"]) == (0.99, 0.9, None)


def test_config_names_the_file(repo: Path) -> None:
    (repo / "ci").mkdir()
    (repo / "ci" / "strict.toml").write_text("energy = 0.9\n")
    report = json_of("inspect", "wasteful", "--config", "ci/strict.toml")
    assert report["settings"]["energy"] == 0.9
    assert report["settings"]["settings_file"] == "ci/strict.toml"
    code, _, err = run("inspect", "wasteful", "--config", "ci/strict.toml", "--no-config")
    assert code == 2 and "--config and --no-config exclude each other" in err


def test_trend_takes_energy_from_the_file(repo: Path) -> None:
    from checkpoints import write_checkpoint

    for i, step in enumerate((5, 50, 500)):
        write_checkpoint(repo / "run" / f"checkpoint-{step}", i)
    (repo / "pyproject.toml").write_text("[tool.lora-audit]\nenergy = 0.8\n")
    report = json_of("trend", "run")
    assert report["settings"]["energy"] == 0.8
    assert report["settings"]["settings_file"] == "pyproject.toml"
    jsonschema.validate(report, _schema("trend.schema.json"))
    assert json_of("trend", "run", "-e", "0.95")["settings"]["energy"] == 0.95


def test_format_from_the_file_applies_where_the_command_offers_it(repo: Path) -> None:
    write_lean(repo / "lean")
    (repo / "lora-audit.toml").write_text('format = "json"\n')
    for args in (["inspect", "lean"], ["compare", "lean", "lean"], ["check", "lean"]):
        code, out, err = run(*args)
        assert code == 0, err
        assert json.loads(out)["kind"] == args[0]
    code, out, _ = run("compress", "wasteful", "--rank", "2", "--dry-run")
    assert code == 0 and json.loads(out)["kind"] == "compress"
    code, out, _ = run("inspect", "lean", "-f", "table")
    assert code == 0 and not out.lstrip().startswith("{"), "the flag wins"


def test_a_format_the_command_lacks_warns_and_writes_a_table(repo: Path) -> None:
    (repo / "lora-audit.toml").write_text('format = "github"\n')
    code, out, _ = run("check", "wasteful")
    assert code == 1 and out.startswith("::error ")
    code, out, err = run("inspect", "wasteful")
    assert code == 0 and "::error" not in out and "wasteful" in out
    assert "format = 'github' is not a format of inspect (table, json, markdown, jsonl)" in err


def test_color_from_the_file(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lora_audit.cli._common as common

    assert "\x1b[" not in run("inspect", "wasteful")[1], "piped: no colour by default"
    (repo / "lora-audit.toml").write_text('color = "always"\n')
    assert "\x1b[" in run("inspect", "wasteful")[1]
    assert "\x1b[" not in run("inspect", "wasteful", "-f", "json")[1], "colour is for tables"
    (repo / "lora-audit.toml").write_text('color = "never"\n')
    monkeypatch.setattr(common, "stdout_is_terminal", lambda: True)
    assert "\x1b[" not in run("inspect", "wasteful")[1]


def test_compress_energy_is_not_taken_from_the_file(repo: Path) -> None:
    (repo / "lora-audit.toml").write_text("energy = 0.9\n")
    code, _, err = run("compress", "wasteful", "--dry-run")
    assert code == 2 and "give exactly one of --rank, --energy, --ratio, --budget" in err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('format = "xml"\n', 'format = "xml" must be one of "table", "json"'),
        ('color = "blue"\n', 'color = "blue" must be one of "auto", "always", "never"'),
        ("format = 3\n", "format = 3 must be one of"),
        ("colour = 'auto'\n", "unknown key 'colour'"),
    ],
)
@pytest.mark.parametrize("command", ["inspect", "compare", "compress", "check"])
def test_an_invalid_output_setting_is_an_input_error(
    repo: Path, text: str, needle: str, command: str
) -> None:
    (repo / "lora-audit.toml").write_text(text)
    args = {
        "compare": ["wasteful", "wasteful"],
        "compress": ["wasteful", "--rank", "2", "--dry-run"],
    }
    code, out, err = run(command, *args.get(command, ["wasteful"]), "-q")
    assert code == 3 and out == ""
    assert err.startswith("lora-audit: error: ") and "lora-audit.toml: " in err and needle in err
    assert len(err.splitlines()) == 1


def test_the_settings_file_is_never_an_output(repo: Path) -> None:
    (repo / "lora-audit.toml").write_text("energy = 0.9\n")
    code, _, err = run("inspect", "wasteful", "-o", "lora-audit.toml", "--force")
    assert code == 2 and "would overwrite the input" in err
    assert (repo / "lora-audit.toml").read_text() == "energy = 0.9\n"
