"""The command line's surface: one-line usage errors, --debug, -q/--quiet, help, completion."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from check_adapters import write_lean, write_wasteful
from typer.testing import CliRunner

from lora_audit.cli import _state, app
from lora_audit.errors import ExitCode

runner = CliRunner()
PREFIX = "lora-audit: error: "
#: Every registered command (a new one gets these tests, and needs -q, --debug and examples).
COMMANDS = tuple(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path, a repository root, so no settings file from outside is found."""
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    return tmp_path


@pytest.fixture
def lean(workdir: Path) -> str:
    write_lean(workdir / "lean")
    return "lean"


@pytest.fixture
def wasteful(workdir: Path) -> str:
    write_wasteful(workdir / "wasteful")
    return "wasteful"


def run(*args: str, **env: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env or None)
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str, *, fix: bool = True) -> str:
    """The only line on stderr, which must be a ``lora-audit: error:`` line (with a fix)."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(PREFIX), lines[0]
    assert " — " in lines[0] or not fix, lines[0]
    assert not any(box in stderr for box in "╭╰│─"), "no rich panel"
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--bogus"], ["no such option: --bogus", "see 'lora-audit --help'"]),
        (["inspct", "x"], ["no such command 'inspct'", "did you mean 'inspect'?"]),
        (["inspect"], ["missing argument 'ADAPTER'", "usage: lora-audit inspect"]),
        (["compare", "a"], ["missing argument 'ADAPTER_B'"]),
        (
            ["inspect", "x", "--energi", "0.9"],
            ["no such option: --energi", "did you mean --energy?"],
        ),
        (["inspect", "x", "-e", "abc"], ["invalid value for '--energy' / '-e'", "number"]),
        (["trend", "x", "y", "--window", "2.5"], ["invalid value for '--window'", "integer"]),
        (["inspect", "x", "-f", "xml"], ["'xml' is not one of 'table', 'json', 'markdown'"]),
        (["check", "x", "--device", "tpu"], ["'tpu' is not one of 'auto', 'cpu', 'cuda'"]),
        (["inspect", "x", "--energy"], ["'--energy' requires an argument", "inspect --help"]),
        (["compress", "x", "y"], ["unexpected extra argument", "compress --help"]),
        (["compress", "x", "--dry-run"], ["give exactly one of --rank, --energy"]),
        (["inspect", "x", "--energy", "2"], ["--energy = 2 must be in (0, 1]"]),
        (["compress", "x", "--rank", "0"], ["--rank 0 must be at least 1", "compress --help"]),
    ],
)
def test_every_usage_error_is_one_line_and_exits_2(args: list[str], needles: list[str]) -> None:
    code, out, err = run(*args)
    assert code == ExitCode.USAGE, err
    assert out == ""
    line = one_error_line(err)
    for needle in needles:
        assert needle in line, line


def test_usage_error_through_the_real_entry_point(workdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lora_audit", "inspect", "x", "--energi", "0.9"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert done.returncode == 2 and done.stdout == ""
    assert one_error_line(done.stderr) == (
        "lora-audit: error: no such option: --energi — did you mean --energy? "
        "(see 'lora-audit inspect --help')"
    )


def test_no_arguments_at_all_prints_the_help_and_exits_2() -> None:
    code, out, err = run()
    assert code == ExitCode.USAGE and out == ""
    assert err.startswith("Usage: lora-audit [OPTIONS] COMMAND [ARGS]...")


def _outcomes(workdir: Path, lean: str, wasteful: str) -> dict[str, tuple[list[str], int]]:
    (workdir / "afile").write_text("")
    return {
        "usage (ours)": (["inspect", lean, "--energy", "2"], 2),
        "usage (parser)": (["inspect", lean, "--bogus"], 2),
        "bad input": (["inspect", "no-such-adapter"], 3),
        "findings": (["check", wasteful, "--device", "cpu"], 1),
        "missing output directory": (["inspect", lean, "-o", "missing/dir/x.json"], 3),
        "output under a file": (["inspect", lean, "-o", "afile/x.json"], 3),
        "pass": (["check", lean, "--device", "cpu"], 0),
    }


@pytest.mark.parametrize(
    "case",
    [
        "usage (ours)",
        "usage (parser)",
        "bad input",
        "findings",
        "missing output directory",
        "output under a file",
        "pass",
    ],
)
def test_debug_never_changes_the_exit_code(
    workdir: Path, lean: str, wasteful: str, case: str
) -> None:
    args, expected = _outcomes(workdir, lean, wasteful)[case]
    plain = run(*args)
    before = run("--debug", *args)
    after = run(*args, "--debug")
    assert plain[0] == expected, plain[2]
    assert before[0] == after[0] == expected, (before[2], after[2])
    assert "Traceback" not in plain[2]
    if expected == 3 or case == "usage (ours)":
        for _, _, err in (before, after):
            assert "Traceback (most recent call last)" in err, err
            assert err.splitlines()[-1] == plain[2].strip(), "the error line ends the traceback"


def test_debug_keeps_exit_3_when_the_write_itself_fails(lean: str) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (the write fails with ENOSPC)")
    plain = run("inspect", lean, "-o", "/dev/full")
    loud = run("inspect", lean, "-o", "/dev/full", "--debug")
    assert plain[0] == loud[0] == ExitCode.INPUT
    assert "the disk is full" in one_error_line(plain[2])
    assert "Traceback" in loud[2] and "OutputError" in loud[2]


def test_a_bug_exits_70_with_and_without_debug(lean: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import lora_audit.commands.inspect as inspect_module

    def boom(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(inspect_module, "inspect_adapter", boom)
    plain = run("inspect", lean)
    loud = run("inspect", lean, "--debug")
    assert plain[0] == loud[0] == ExitCode.INTERNAL == 70
    line = one_error_line(plain[2])
    assert "internal error (unexpected ZeroDivisionError: planted)" in line
    assert "please report it at" in line and "--debug" in line
    assert "Traceback" in loud[2]


def _plant_alpha_callback(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Make ``--alpha``'s option callback raise ``error`` (it runs before any command body)."""
    from typing import get_args

    from lora_audit.cli import _options

    def boom(value: float | None) -> float | None:
        raise error

    monkeypatch.setattr(get_args(_options.AlphaOption)[1], "callback", boom)


@pytest.mark.parametrize("command", ["inspect", "check"])
def test_a_bug_in_an_option_callback_exits_70_too(
    lean: str, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    _plant_alpha_callback(monkeypatch, ZeroDivisionError("planted in a callback"))
    plain = run(command, lean, "--alpha", "8")
    loud = run("--debug", command, lean, "--alpha", "8")
    assert plain[0] == loud[0] == ExitCode.INTERNAL == 70
    line = one_error_line(plain[2])
    assert "internal error (unexpected ZeroDivisionError: planted in a callback)" in line
    assert "please report it at" in line and "--debug" in line
    assert plain[1] == ""
    assert "Traceback" in loud[2] and loud[2].splitlines()[-1] == line


def test_a_known_error_in_an_option_callback_keeps_its_code(
    lean: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_audit.errors import UsageError

    _plant_alpha_callback(monkeypatch, UsageError("--alpha is planted", hint="drop it"))
    code, out, err = run("inspect", lean)
    assert (code, out) == (ExitCode.USAGE, "")
    assert one_error_line(err) == "lora-audit: error: --alpha is planted — drop it"


def test_debug_is_forgotten_between_runs(lean: str) -> None:
    run("inspect", "nope", "--debug")
    assert "Traceback" not in run("inspect", "nope")[2]
    assert not _state.DEBUG and not _state.QUIET


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_quiet_debug_and_the_settings_file(command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0
    for option in ("-q, --quiet", "--debug", "--config PATH", "--no-config"):
        assert option in out, option


def test_quiet_prints_nothing_but_keeps_the_exit_code(workdir: Path, wasteful: str) -> None:
    assert run("check", wasteful, "-q") == (1, "", "")
    code, out, err = run("inspect", wasteful, "--quiet", "-f", "json", "-o", "r.json")
    assert (code, out, err) == (0, "", "")
    assert json.loads((workdir / "r.json").read_text())["kind"] == "inspect"
    code, out, err = run("inspect", "nope", "-q")
    assert code == 3 and out == ""
    assert "nope: no such file or directory" in one_error_line(err, fix=False)


def test_quiet_silences_warnings(workdir: Path) -> None:
    import numpy as np
    from factories import FakeAdapter, FakeLayer, planted_factors, write_peft

    b, a = planted_factors(out=8, inp=6, rank=2, spectrum=np.array([2.0, 1.0]), seed=0)
    layer = FakeLayer("model.layers.0.q_proj", b, a)
    write_peft(workdir / "bare", FakeAdapter([layer]), with_config=False)
    loud = run("inspect", "bare")
    assert loud[0] == 0 and "lora-audit: warning:" in loud[2], "no config: the scale is assumed"
    assert run("inspect", "bare", "-q") == (0, "", "")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("columns", ["60", "80", "100", "160"])
def test_help_is_plain_and_ends_with_examples(command: str, columns: str) -> None:
    code, out, _ = run(command, "--help", COLUMNS=columns)
    assert code == 0
    for noise in ("<bool>", "<list", "<path>", "<float>", "<int>", "{", "╭", "\x1b["):
        assert noise not in out, (noise, out)
    assert f"Usage: lora-audit {command} [OPTIONS] " in out
    assert "\n  Examples:\n    lora-audit " + command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_flags_show_no_metavar_and_values_a_plain_one(command: str) -> None:
    sub = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    ctx = sub.make_context(command, ["--help"], resilient_parsing=True)
    for param in sub.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or param.param_type_name != "option":
            continue
        names = ", ".join(sorted(param.opts, key=len))
        if param.is_flag:
            assert record[0] == names, record[0]
        else:
            metavar = record[0].removeprefix(names + " ")
            assert metavar.isupper() or metavar.startswith("["), record[0]
    _state.reset()


@pytest.mark.parametrize("columns", ["60", "80", "100", "160"])
def test_extras_are_written_literally(columns: str) -> None:
    for command in ("inspect", "trend", "compare"):
        out = run(command, "--help", COLUMNS=columns)[1]
        assert "pip install 'lora-rank-audit[plot]'" in " ".join(out.split()), out
        assert "'lora-audit" not in out


def test_metavars_name_what_is_expected() -> None:
    out = run("inspect", "--help")[1]
    assert "Usage: lora-audit inspect [OPTIONS] ADAPTER..." in out
    for shown in ("ADAPTER...  ", "-e, --energy FLOAT", "-o, --output PATH", "--base-k INT"):
        assert shown in out, shown
    assert "-f, --format [table|json|markdown|jsonl]" in out
    assert "--force  " in out, "a flag shows no metavar"
    assert "Usage: lora-audit check [OPTIONS] ADAPTER..." in run("check", "--help")[1]
    assert "--budget COUNT" in run("compress", "--help")[1]


def _examples(command: str) -> list[list[str]]:
    out = run(command, "--help", COLUMNS="200")[1]
    block = out.split("\n  Examples:\n", 1)[1]
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("    ")]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_example_parses(command: str) -> None:
    """Each example names options that exist, with values they accept."""
    group = typer.main.get_command(app)
    examples = _examples(command)
    assert 2 <= len(examples) <= 5
    for args in examples:
        assert args[0] == command
        sub = group.commands[command]  # type: ignore[attr-defined]
        with sub.make_context(command, args[1:]):
            pass
    _state.reset()


def test_compress_help_tells_output_from_report() -> None:
    out = " ".join(run("compress", "--help")[1].split())
    assert "-o, --output PATH Where to write the compressed ADAPTER" in out
    assert "--report PATH Write the REPORT" in out
    assert "-e, --energy FLOAT" in out


def test_root_help_lists_exit_codes_and_completion() -> None:
    out = run("--help")[1]
    assert "--install-completion" in out and "--show-completion" in out
    assert "Exit codes:" in out and "2 usage error" in out
    assert "\n  Examples:\n    lora-audit inspect" in out


def test_show_completion_prints_a_script() -> None:
    code, out, err = run("--show-completion", "bash", SHELL="/bin/bash")
    assert code == 0, err
    assert "_LORA_AUDIT_COMPLETE" in out and "complete " in out


def test_install_completion_writes_only_below_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    code, _, err = run("--install-completion", "bash", SHELL="/bin/bash", HOME=str(home))
    assert code == 0, err
    written = [p for p in home.rglob("*") if p.is_file()]
    assert written and any("_LORA_AUDIT_COMPLETE" in p.read_text() for p in written)


def test_version_short_and_long() -> None:
    short, long = run("-V"), run("--version")
    assert short[0] == long[0] == 0
    assert short[1] == long[1] and short[1].startswith("lora-audit ")
    assert "lora-rank-audit" in short[1]


#: What ``--help`` must not load: the renderers and rich's console (``--help`` is plain text),
#: and the numerical stack.
HEAVY = ("lora_audit.render", "rich.console", "numpy", "torch", "safetensors", "matplotlib")
#: Runs ``python -m lora_audit ARGS`` for each ``ARGS`` in argv[1] (JSON) in one process, and
#: prints, for each, its exit code, whether it printed a usage, and the heavy modules loaded.
HELP_PROBE = """
import contextlib, io, json, runpy, sys
heavy = tuple(sys.argv[2].split(","))
seen = []
for args in json.loads(sys.argv[1]):
    sys.argv = ["lora-audit", *args]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_module("lora_audit", run_name="__main__")
        except SystemExit as stop:
            code = stop.code
    loaded = sorted(m for m in sys.modules if m.startswith(heavy))
    seen.append([args, code, out.getvalue().startswith("Usage: lora-audit"), loaded])
print(json.dumps(seen))
"""


def test_help_of_every_command_loads_no_renderer_rich_numpy_or_torch() -> None:
    helps = [["--help"], *([c, "--help"] for c in COMMANDS)]
    probe = [sys.executable, "-c", HELP_PROBE, json.dumps(helps), ",".join(HEAVY)]
    out = subprocess.run(probe, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[args, 0, True, []] for args in helps]


@pytest.mark.parametrize(
    ("words", "cword", "expected"),
    [
        ("lora-audit ins", "1", ["inspect"]),
        ("lora-audit inspect x --ene", "3", ["--energy"]),
        ("lora-audit inspect x -f ", "4", ["table", "json", "markdown", "jsonl"]),
    ],
)
def test_completion_completes_commands_options_and_choices(
    words: str, cword: str, expected: list[str]
) -> None:
    code, out, _ = run(_LORA_AUDIT_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=cword)
    assert code == 0 and out.split() == expected


def test_every_exit_code_is_documented() -> None:
    """The exit-code table of docs/usage.md lists exactly the codes of ``ExitCode`` (70 too)."""
    import re

    usage = Path(__file__).resolve().parents[2] / "docs" / "usage.md"
    table = usage.read_text(encoding="utf-8").split("### Exit codes", 1)[1].split("###", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)}
    assert documented == {int(code) for code in ExitCode}
