"""Helpers shared by the commands: error handling, output, progress, option types."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from lora_audit import HOME
from lora_audit.cli import _state
from lora_audit.commands.options import check_fraction as check_fraction  # the commands use it
from lora_audit.errors import ExitCode, LoraAuditError, Terminated

if TYPE_CHECKING:
    from lora_audit.adapter import Adapter
    from lora_audit.formats.output_guard import OutputGuard
    from lora_audit.report import CheckReport, InspectManyReport, TrendReport

T = TypeVar("T")


def err(message: str) -> None:
    """Write one line to stderr: every warning and error passes here, so untrusted names in
    ``message`` are escaped once (no control, bidi or line-break character; no line that
    starts with a CI command such as ``::error``)."""
    from lora_audit.render.escape import for_terminal

    sys.stderr.write(for_terminal(message.rstrip("\n")) + "\n")
    sys.stderr.flush()  # in order with the report on a shared terminal (or a test's capture)


def err_lines(text: str) -> None:
    """Write several lines to stderr (a traceback), each escaped as :func:`err` does."""
    for line in text.rstrip("\n").splitlines():
        err(line)


def warn(message: str) -> None:
    """A warning on stderr (never on stdout, which carries only the report); none with -q."""
    if not _state.QUIET:
        err(f"lora-audit: warning: {message}")


def note(message: str) -> None:
    """An informational line on stderr (``lora-audit: …``); none with ``--quiet``."""
    if not _state.QUIET:
        err(f"lora-audit: {message}")


def fail(message: str) -> None:
    """An error line on stderr (``lora-audit: error: …``); written even with ``--quiet``."""
    err(f"lora-audit: error: {message}")


def exit_code_for(report: CheckReport | TrendReport | InspectManyReport) -> ExitCode:
    """The process exit code a finished report calls for (the reports hold no exit codes).

    ``check``: pass → 0, fail (findings) → 1, error (an adapter could not be read) → 3.
    ``trend``: drift → 1 only under ``--fail-on-drift``, else 0. ``inspect`` of several
    adapters: 3 when one could not be read, else 0 (inspect reports; it does not gate).
    """
    if report.kind == "trend":
        drifting = report.status == "drift" and report.settings.fail_on_drift  # type: ignore[union-attr]
        return ExitCode.FINDINGS if drifting else ExitCode.OK
    codes = {
        "pass": ExitCode.OK,
        "ok": ExitCode.OK,
        "fail": ExitCode.FINDINGS,
        "error": ExitCode.INPUT,
    }
    return codes[report.status]


def run_guarded(
    body: Callable[[], int],
    *,
    force: bool = False,
    inputs: Sequence[Path] = (),
    base: Path | None = None,
) -> None:
    """Run a command body; turn known errors into one stderr line and an exit code.

    With ``--debug`` the traceback comes first; the exit code is the same either way.

    Parameters
    ----------
    force
        ``--force``: outputs may replace existing files (never an input).
    inputs
        The adapters (files or directories) the command reads; no output may replace them.
    base
        ``--base``: the base model's files are protected too.
    """
    from lora_audit.formats import atomic

    try:
        _state.OUTPUTS = _guard(force=force, inputs=inputs, base=base)
        with atomic.signals_end_at_once():  # caught only while a temporary file exists
            code = body()
    except LoraAuditError as exc:
        _traceback()
        usage = exc.exit_code == ExitCode.USAGE and exc.hint is None
        fail(f"{exc} — see '{_command_path()} --help'" if usage else str(exc))
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        atomic.remove_live()
        _traceback()
        err("lora-audit: interrupted")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except Terminated:
        atomic.remove_live()
        _traceback()
        err("lora-audit: terminated")
        raise typer.Exit(int(ExitCode.TERMINATED)) from None
    except typer.Exit:
        raise
    except Exception as exc:  # a bug (70), never reported as bad input (3)
        atomic.remove_live()
        _traceback()
        fail(internal_error(exc))
        raise typer.Exit(int(ExitCode.INTERNAL)) from None
    finally:
        _state.OUTPUTS = None
    raise typer.Exit(code)


def internal_error(exc: BaseException) -> str:
    """The error line's text for a bug (exit 70), wherever it was raised: in a command's body
    (:func:`run_guarded`) or in an option callback, before the body runs (``_usage.Group``)."""
    return (
        f"internal error (unexpected {exc.__class__.__name__}: {exc}) — a bug in "
        f"lora-audit, not in your input: please report it at {HOME}/issues with the "
        "output of the same command run with --debug"
    )


def _command_path() -> str:
    """``lora-audit inspect`` while ``inspect`` runs (``lora-audit`` outside a command)."""
    from typer._click.globals import get_current_context

    from lora_audit.cli._usage import command_path

    return command_path(get_current_context(silent=True))


def _traceback() -> None:
    """With ``--debug``, the traceback of the exception being handled (the exit code stays)."""
    if _state.DEBUG:
        import traceback

        err_lines(traceback.format_exc())


def _guard(*, force: bool, inputs: Sequence[Path], base: Path | None) -> OutputGuard:
    from lora_audit.formats.output_guard import OutputGuard

    guard = OutputGuard(force=force)
    for path in inputs:
        guard.add_adapter(path)
    if base is not None:
        guard.add_base(base)
    return guard


def outputs() -> OutputGuard:
    """The running command's output guard (a fresh one outside :func:`run_guarded`)."""
    if _state.OUTPUTS is None:
        from lora_audit.formats.output_guard import OutputGuard

        return OutputGuard()
    return _state.OUTPUTS


def preflight(output: Path | None, *, role: str = "--output") -> None:
    """Check an output path before any work is done (it is checked again when written)."""
    if output is not None:
        outputs().plan(output, role=role)


def emit(text: str, *, output: Path | None, role: str = "--output") -> None:
    """Write the rendered report to ``output`` (through the guard, atomically) or to stdout
    (not with ``--quiet``)."""
    if output is None:
        if _state.QUIET:
            return
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    outputs().write(output, text.encode("utf-8"), role=role)


def stdout_is_terminal() -> bool:
    """True when stdout is an interactive terminal."""
    return sys.stdout.isatty()


def terminal_width() -> int:
    """Width for tables: the terminal's when interactive, else 100 (or $COLUMNS)."""
    if "COLUMNS" in os.environ and os.environ["COLUMNS"].isdigit():
        return int(os.environ["COLUMNS"])
    if stdout_is_terminal():
        return os.get_terminal_size().columns
    return 100


@contextmanager
def progress_bar(total: int, *, description: str) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal (and not CI); else ``None``."""
    if total <= 0 or _state.QUIET or not sys.stderr.isatty() or os.environ.get("CI"):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        from lora_audit.render.escape import for_rich

        task = bar.add_task(for_rich(description), total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        yield advance


def options_dict(**kwargs: Any) -> dict[str, Any]:
    """Drop ``None`` values (options the user did not give)."""
    return {k: v for k, v in kwargs.items() if v is not None}


def load_reported(path: Path, *, alpha: float | None, input_format: str) -> Adapter:
    """Read an adapter and print the reader's warnings on stderr, and a warning naming each
    adapter saved inside its directory that is not read with it (PEFT's ``d/<name>/``)."""
    from lora_audit.formats import load_adapter
    from lora_audit.formats.discovery import named_adapters

    adapter = load_adapter(path, alpha=alpha, input_format=input_format)
    for message in adapter.warnings:
        warn(message)
    for other in named_adapters(path) if path.is_dir() else ():
        warn(
            f"{other}: another adapter saved inside {path} (PEFT writes each named adapter "
            f"in its own subdirectory) is not part of this one and was not read; name "
            f"{other} to read it"
        )
    return adapter


def emit_report(
    report: Any, fmt: str, *, output: Path | None, role: str = "--output", color: str = "auto"
) -> None:
    """Render a finished report in ``fmt`` and emit it; colour as :func:`use_color` decides."""
    from lora_audit.output_format import OutputFormat
    from lora_audit.render import render

    chosen = OutputFormat(fmt)
    use = chosen is OutputFormat.TABLE and use_color(color, to_file=output is not None)
    emit(render(report, chosen, width=terminal_width(), color=use), output=output, role=role)


def use_color(choice: str, *, to_file: bool = False) -> bool:
    """Whether a table gets colour: ``--color always|never`` first, then the settings file's
    ``color``; then a non-empty ``NO_COLOR`` (no-color.org) turns it off and a non-empty
    ``FORCE_COLOR`` on; then ``TERM=dumb`` or a file or pipe means no colour, and a terminal
    means colour."""
    if choice == "auto" and _state.SETTINGS is not None:
        choice = str(_state.SETTINGS.output.get("color", "auto"))
    if choice in ("always", "never"):
        return choice == "always"
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    if to_file or os.environ.get("TERM") == "dumb":
        return False
    return stdout_is_terminal()
