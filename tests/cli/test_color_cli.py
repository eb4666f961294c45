"""Colour: ``--color`` first, then NO_COLOR / FORCE_COLOR, then TERM=dumb and the terminal."""

from __future__ import annotations

import pytest
from conftest import SAMPLES
from typer.testing import CliRunner

from lora_audit.cli import _common, app

runner = CliRunner()
ANSI = "\x1b["
ADAPTER = str(SAMPLES / "minilm-r4-bf16")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "terminal", "choice", "expected"),
    [
        ({}, True, "auto", True),
        ({}, False, "auto", False),
        ({"NO_COLOR": "1"}, True, "auto", False),  # no-color.org: on a terminal too
        ({"NO_COLOR": "0"}, True, "auto", False),  # any non-empty value
        ({"NO_COLOR": ""}, True, "auto", True),  # empty: ignored
        ({"TERM": "dumb"}, True, "auto", False),
        ({"FORCE_COLOR": "1"}, False, "auto", True),  # piped, but forced
        ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False, "auto", False),
        ({"FORCE_COLOR": "1", "TERM": "dumb"}, False, "auto", True),
        ({"NO_COLOR": "1"}, False, "always", True),  # the flag wins
        ({"FORCE_COLOR": "1"}, True, "never", False),
    ],
)
def test_color_decision(
    clean_env: pytest.MonkeyPatch,
    env: dict[str, str],
    terminal: bool,
    choice: str,
    expected: bool,
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    clean_env.setattr(_common, "stdout_is_terminal", lambda: terminal)
    assert _common.use_color(choice) is expected


def run(args: list[str], env: dict[str, str]) -> str:
    result = runner.invoke(app, args, env={"COLUMNS": "100", **env})
    assert result.exit_code in (0, 1), result.output
    return result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", ADAPTER, "--device", "cpu"],
        ["check", ADAPTER],
        ["compress", ADAPTER, "--dry-run", "--energy", "0.9"],
        ["trend", str(SAMPLES / "minilm-run")],
        ["compare", ADAPTER, ADAPTER],
    ],
)
def test_every_command_takes_the_flag(clean_env: pytest.MonkeyPatch, args: list[str]) -> None:
    assert ANSI in run([*args, "--color", "always"], {"NO_COLOR": "1"})
    assert ANSI not in run([*args, "--color", "never"], {"FORCE_COLOR": "1"})


def test_environment_through_the_cli(clean_env: pytest.MonkeyPatch) -> None:
    args = ["check", ADAPTER]
    assert ANSI in run(args, {"FORCE_COLOR": "1"})
    assert ANSI not in run(args, {"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert ANSI not in run(args, {})  # piped: no colour
    clean_env.setattr(_common, "stdout_is_terminal", lambda: True)
    assert ANSI in run(args, {})
    assert ANSI not in run(args, {"NO_COLOR": "1"})
    assert ANSI not in run(args, {"TERM": "dumb"})


def test_json_is_never_coloured(clean_env: pytest.MonkeyPatch) -> None:
    assert ANSI not in run(["check", ADAPTER, "--format", "json", "--color", "always"], {})


def test_a_bad_choice_is_a_usage_error() -> None:
    result = runner.invoke(app, ["check", ADAPTER, "--color", "sometimes"])
    assert result.exit_code == 2
