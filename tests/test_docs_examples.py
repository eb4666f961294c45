"""Every ``$ lora-audit …`` session and Python example of README.md and docs/*.md runs and matches.

Each page runs in a fresh work directory (``tmp_path``) holding a copy of
``sample_adapters/``, two small synthetic adapters under ``adapters/`` (``support-bot``: r=8,
every layer uses its rank; ``summarizer``: r=32, three directions per layer, one layer
untrained) and an empty ``.git`` (so no settings file above it is found). ``lora-audit`` runs
in this process through Typer's ``CliRunner`` (stdout and stderr as a terminal shows them,
100 columns); ``cd DIR`` and ``echo $?`` are understood; any other command runs in ``bash``
(skipped, and said so, when its program is not installed). How examples are found, the
markers and the matching rules: ``tests/support/docs_examples.py`` and docs/development.md.
"""

from __future__ import annotations

import doctest
import glob
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from docs_examples import Example, commands, examples, mismatch
from factories import FakeAdapter, FakeLayer, planted_factors, write_peft
from typer.testing import CliRunner

from lora_audit.cli import app

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
#: Environment that would change what a command prints or where it writes.
CLEARED = ("COLUMNS", "NO_COLOR", "FORCE_COLOR", "CI", "GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY")
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
#: At most this many skipped examples in all: a skip needs a GPU, a big model or the network.
MAX_SKIPS = 12


def _layers(rank: int, spectrum: list[float], *, untrained: int | None = None) -> FakeAdapter:
    layers = []
    for i in range(4):
        b, a = planted_factors(
            out=64, inp=64, rank=rank, spectrum=np.array(spectrum), seed=i, dtype=np.float32
        )
        if i == untrained:
            b = np.zeros_like(b)
        layers.append(FakeLayer(f"model.layers.{i}.self_attn.q_proj", b, a))
    return FakeAdapter(layers, config={"lora_alpha": 2 * rank})


def make_work(work: Path) -> None:
    """The files every page's examples may name (see the module docstring)."""
    shutil.copytree(
        REPO / "sample_adapters", work / "sample_adapters", ignore=shutil.ignore_patterns("*.py")
    )
    (work / ".git").mkdir()
    write_peft(work / "adapters" / "support-bot", _layers(8, [8.0, 7, 6, 5, 4, 3, 2, 1.5]))
    write_peft(work / "adapters" / "summarizer", _layers(32, [5.0, 3, 2], untrained=1))


@dataclass
class Shell:
    """The state of one page's session: the directory, the last exit code, assignments."""

    cwd: Path
    status: int = 0
    assignments: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _unquoted_pipe(text: str) -> int:
    """Index of the first ``|`` outside quotes in ``text``, or -1."""
    quote = ""
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "|":
            return index
    return -1


def _expand(word: str, cwd: Path) -> list[str]:
    """Brace and glob expansion of one argument, as bash does it (sorted; kept if no match)."""
    if braces := re.match(r"(.*)\{([^{}]*,[^{}]*)\}(.*)", word):
        head, options, tail = braces.groups()
        return [w for o in options.split(",") for w in _expand(head + o + tail, cwd)]
    if any(c in word for c in "*?["):
        matches = sorted(glob.glob(word, root_dir=cwd))
        return [m + ("/" if word.endswith("/") and not m.endswith("/") else "") for m in matches]
    return [word]


def _lora_audit(words: list[str], shell: Shell) -> tuple[str, str]:
    """Run ``lora-audit`` in this process; (stdout, stdout and stderr as a terminal shows them)."""
    env = {}
    while words and ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[0] == "lora-audit", words
    args = [w for word in words[1:] for w in _expand(word, shell.cwd)]
    if absolute := [a for a in args if a.startswith("/")]:
        return "", f"{absolute}: examples name paths relative to the work directory\n"
    os.chdir(shell.cwd)  # relative paths are the process's: after ``cd``, the session's
    result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)
    shell.status = result.exit_code
    assert shell.status != 70, result.output  # a crash of lora-audit itself
    return result.stdout, result.output


def _bash(command: str, shell: Shell, stdin: str | None = None) -> str | None:
    """Run a command that is not lora-audit in bash; ``None`` when its program is missing."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    program = "" if ASSIGNMENT.match(command) else shlex.split(command)[0]
    if program and shutil.which(program, path=path) is None:
        shell.skipped.append(f"{command} ({program} is not installed)")
        return None
    if ASSIGNMENT.match(command):
        shell.assignments.append(command)  # ``NAME=$(…)``: seen by the commands after it
    env = {**os.environ, "PATH": path}  # ``python`` is this interpreter
    done = subprocess.run(
        ["bash", "-c", "\n".join([*shell.assignments, command])],
        cwd=shell.cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    shell.status = done.returncode
    return done.stdout + done.stderr


def run_command(text: str, shell: Shell) -> str | None:
    """What ``text`` prints; ``None`` when it cannot be run here (a program not installed)."""
    if text == "echo $?":
        return f"{shell.status}\n"
    if text.startswith("cd "):
        shell.cwd = shell.cwd / text[3:].strip()
        return ""
    pipe = _unquoted_pipe(text)
    head, tail = (text, "") if pipe < 0 else (text[:pipe], text[pipe + 1 :].strip())
    words = shlex.split(head)
    program = next((w for w in words if not ASSIGNMENT.match(w)), "")
    if program == "lora-audit":
        stdout, output = _lora_audit(words, shell)
        return _bash(tail, shell, stdin=stdout) if tail else output
    return _bash(text, shell)


def run_python(example: Example, globs: dict[str, object]) -> str | None:
    """A doctest's failures (``None`` if it passed); a script just has to run."""
    if ">>>" not in example.body:
        exec(compile(example.body, example.where, "exec"), globs)
        return None
    test = doctest.DocTestParser().get_doctest(
        example.body, globs, example.where, str(example.page), example.line
    )
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LoraAuditWarning goes to stderr, not in the output
        result = runner.run(test, out=out.write, clear_globs=False)
    globs.update(test.globs)  # the next block of the page sees these names
    return out.getvalue() if result.failed else None


def run_page(page: Path, work: Path) -> list[str]:
    """Run every example of ``page`` in ``work``; the problems found."""
    shell, globs, problems = Shell(cwd=work), {"__name__": "__docs__"}, []
    for example in examples(page):
        if example.skipped:
            continue
        if example.kind == "file":
            (work / example.argument).write_text(example.body, encoding="utf-8")
        elif example.kind == "python":
            os.chdir(shell.cwd)
            if failure := run_python(example, globs):
                problems.append(f"{example.where}:\n{failure}")
        else:
            for command in commands(example.body):
                actual = run_command(command.text, shell)
                if actual is not None and (diff := mismatch(command.shown, actual)):
                    problems.append(f"{example.where}: $ {command.text}\n{diff}")
    if shell.skipped:
        print("not run here:", *shell.skipped, sep="\n  ")  # shown with -rA
    return problems


def _pages_with_examples() -> list[Path]:
    return [page for page in PAGES if any(not e.skipped for e in examples(page))]


@pytest.mark.parametrize("page", _pages_with_examples(), ids=lambda p: p.name)
def test_examples_run_and_match(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    make_work(tmp_path)
    problems = run_page(page, tmp_path)
    assert not problems, "\n\n".join(problems)


def test_skipped_examples_say_why_and_stay_rare() -> None:
    """Each ``docs-example: skip`` names its reason in parentheses; they are listed here."""
    skipped = [e for page in PAGES for e in examples(page) if e.skipped]
    listing = "\n".join(f"{e.where}: {e.argument}" for e in skipped)
    print(f"skipped examples:\n{listing}")  # shown with -s or -rA
    assert all(re.fullmatch(r"\(.+\)", e.argument) for e in skipped), listing
    assert len(skipped) <= MAX_SKIPS, listing


def test_every_page_is_searched() -> None:
    """New pages are picked up by the glob, and the known sessions are found."""
    assert {"README.md", "usage.md", "ci.md", "python-api.md"} <= {p.name for p in PAGES}
    sessions = [e for page in PAGES for e in examples(page) if e.kind == "session"]
    assert len(sessions) >= 20, [e.where for e in sessions]


def test_the_matching_rules() -> None:
    """``…`` lines stand for any lines, an inline ``…`` for any text; nothing else is loose."""
    assert mismatch("a\n…\nd", "a\nb\nc\nd\n") is None
    assert mismatch("a\n …  (the rest)\n", "a\nb\nc\n") is None
    assert mismatch("a\nd", "a\nb\nd") is not None  # a line left out without a …
    assert mismatch("a\nb", "a\nb\nc") is not None  # more output than shown
    assert mismatch("x … z", "x y\n  z") is None  # an inline … may run over a line break
    assert mismatch("x … (what is left out)", "x y z") is None
    assert mismatch("x (y)", "x (z)") is not None  # a note counts only after a …
    assert mismatch("\na  \n\n", "a\n") is None  # trailing blanks and blank edges
    (command,) = commands("$ lora-audit a \\\n    b\nout\n")
    assert command.text == "lora-audit a b" and command.shown == "out"
