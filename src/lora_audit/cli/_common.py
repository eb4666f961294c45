"""Helpers shared by the commands: error handling, output, progress, option types."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from lora_audit.cli import _state
from lora_audit.errors import ExitCode, LoraAuditError, UsageError

if TYPE_CHECKING:
    from lora_audit.adapter import Adapter

T = TypeVar("T")


def err(message: str) -> None:
    """Write one line to stderr: every warning and error passes here, so untrusted names in
    ``message`` are escaped once (no control, bidi or line-break character; no line that
    starts with a CI command such as ``::error``)."""
    from lora_audit.render.escape import for_terminal

    sys.stderr.write(for_terminal(message.rstrip("\n")) + "\n")


def warn(message: str) -> None:
    """A warning on stderr (never on stdout, which carries only the report)."""
    err(f"lora-audit: warning: {message}")


def run_guarded(body: Callable[[], int]) -> None:
    """Run a command body; turn known errors into one stderr line and an exit code."""
    try:
        code = body()
    except LoraAuditError as exc:
        if _state.DEBUG:
            raise
        err(f"lora-audit: error: {exc}")
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        err("lora-audit: interrupted")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:  # a bug, or an input problem we failed to anticipate
        if _state.DEBUG:
            raise
        err(
            f"lora-audit: error: unexpected {exc.__class__.__name__}: {exc} "
            "(run with --debug for a traceback, and please report it)"
        )
        raise typer.Exit(int(ExitCode.INPUT)) from None
    raise typer.Exit(code)


def check_fraction(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Validate an option that must lie in (0, 1] (or [0, 1])."""
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        bound = "[0, 1]" if allow_zero else "(0, 1]"
        raise UsageError(f"{name} = {value:g} must be in {bound}", hint=f"e.g. {name} 0.99")
    return value


def emit(text: str, *, output: Path | None) -> None:
    """Write the rendered report to ``output`` (atomically) or to stdout."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from lora_audit.formats.safetensors_io import write_atomic

    write_atomic(output, text.encode("utf-8"))


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
    if total <= 0 or not sys.stderr.isatty() or os.environ.get("CI"):
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
    """Read an adapter and print the reader's warnings on stderr."""
    from lora_audit.formats import load_adapter

    adapter = load_adapter(path, alpha=alpha, input_format=input_format)
    for message in adapter.warnings:
        warn(message)
    return adapter


def emit_report(report: Any, fmt: str, *, output: Path | None) -> None:
    """Render a finished report in ``fmt`` (colour only for a table on a terminal) and emit it."""
    from lora_audit.render import OutputFormat, render

    chosen = OutputFormat(fmt)
    color = output is None and chosen is OutputFormat.TABLE and stdout_is_terminal()
    emit(render(report, chosen, width=terminal_width(), color=color), output=output)
