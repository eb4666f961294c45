"""How the command line looks and fails: plain help, plain metavars, one-line usage errors.

:class:`Group` is the ``lora-audit`` command and :class:`Command` each subcommand (register
a new one with ``app.command(NAME, cls=Command, epilog=examples(...))``). Together they

- print every usage error (unknown option or command, bad value or choice, missing argument)
  as one line on stderr, ``lora-audit: error: <what> — <how to fix>``, keeping click's "did
  you mean" hints, and exit :attr:`~lora_audit.errors.ExitCode.USAGE`;
- write help as plain text (no rich markup, which would swallow ``lora-rank-audit[plot]``),
  with metavars such as ``ADAPTER``, ``PATH``, ``FLOAT``, ``INT`` or ``[table|json]`` and
  none for flags;
- end each command's help with a short block of examples (:func:`examples`).

Nothing here imports numpy or torch: ``lora-audit --help`` stays instant.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

import typer
import typer.core
from typer._click import exceptions as _click_errors
from typer._click.formatting import HelpFormatter

from lora_audit.cli import _state
from lora_audit.errors import ExitCode

PROG = "lora-audit"

_TYPE_METAVARS = {"float": "FLOAT", "int": "INT", "str": "TEXT", "path": "PATH", "Path": "PATH"}


def examples(*lines: str) -> str:
    """An ``Examples:`` block for a command's help; click keeps it unwrapped (``\\b``)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def _plain_metavar(param: Any, ctx: Any) -> str | None:
    """``FLOAT``, ``INT``, ``PATH``, ``TEXT`` or ``[a|b|c]``; ``None`` for a flag."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    display = getattr(param, "display_type", None)
    if display is None:  # pragma: no cover - another typer
        return None
    label = str(display(ctx)).strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    if "|" in label:
        return f"[{label}]"
    return _TYPE_METAVARS.get(label, label.upper())


_NO_BREAK = "\u2011"  # a non-breaking hyphen while the help is wrapped


class _Formatter(HelpFormatter):
    """click's formatter, but lines never break at a hyphen: ``'lora-rank-audit[plot]'``,
    ``--max-layer-waste`` and ``checkpoint-*`` stay whole, so they can be copied."""

    def write(self, string: str) -> None:
        super().write(string.replace(_NO_BREAK, "-"))

    def write_text(self, text: str) -> None:
        super().write_text(text.replace("-", _NO_BREAK))

    def write_dl(self, rows: Any, col_max: int = 30, col_spacing: int = 2) -> None:
        rows = [(first, second.replace("-", _NO_BREAK)) for first, second in rows]
        super().write_dl(rows, col_max, col_spacing)


class _Context(typer.Context):
    formatter_class = _Formatter


class Command(typer.core.TyperCommand):
    """A subcommand with plain metavars in its usage line and help."""

    context_class = _Context

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ctx = typer.Context(self, info_name=self.name)
        for param in self.params:
            if isinstance(param, typer.core.TyperArgument):
                if param.metavar is None:
                    param.metavar = (param.name or "arg").upper()
            elif isinstance(param, typer.core.TyperOption) and param.metavar is None:
                metavar = _plain_metavar(param, ctx)
                if metavar is not None:
                    param.metavar = metavar

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """``[OPTIONS] ADAPTER`` rather than ``[OPTIONS] {adapter}``."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                pieces.append(_argument_label(param))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """Arguments by name (no ``<path>`` type), then options as click writes them."""
        arguments: list[tuple[str, str]] = []
        options: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if isinstance(param, typer.core.TyperArgument):
                arguments.append((_argument_label(param, usage=False), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _argument_label(param: Any, *, usage: bool = True) -> str:
    label = str(param.metavar)
    if usage and not param.required:
        label = f"[{label}]"
    return label + ("..." if param.nargs != 1 else "")


class Group(typer.core.TyperGroup):
    """The ``lora-audit`` command: runs a subcommand, turns click's errors into one line."""

    context_class = _Context

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; exit with the command's code (``standalone_mode``)."""
        _state.reset()
        given = list(sys.argv[1:] if args is None else args)
        command = next((arg for arg in given if arg in self.commands), None)
        try:
            code = super().main(
                args,
                prog_name or PROG,
                complete_var,
                standalone_mode=False,
                **extra,
            )
        except _click_errors.ClickException as exc:
            if not standalone_mode:
                raise
            code = _fail(exc, command=command)
        except typer.Abort:
            sys.stderr.write(f"{PROG}: aborted\n")
            code = int(ExitCode.INTERRUPTED)
        except Exception as exc:  # raised outside run_guarded: in an option callback
            if not standalone_mode:
                raise
            code = _crash(exc)
        code = code if isinstance(code, int) else int(ExitCode.OK)
        if standalone_mode:
            sys.exit(code)
        return code


def _fail(exc: Any, *, command: str | None) -> int:
    """Write one line on stderr (the help, when no argument was given) and return the code."""
    from lora_audit.cli._common import err, err_lines

    if _state.DEBUG:
        import traceback

        err_lines(traceback.format_exc())
    if isinstance(exc, _click_errors.NoArgsIsHelpError):
        sys.stderr.write(exc.format_message().rstrip("\n") + "\n")
    else:
        err(usage_line(exc, command=command))
    usage = isinstance(exc, _click_errors.UsageError)
    return int(ExitCode.USAGE if usage else ExitCode.INPUT)


def _crash(exc: Exception) -> int:
    """One error line for an exception no command body caught (a callback's), and its code:
    a :class:`~lora_audit.errors.LoraAuditError` keeps its own, anything else is a bug (70)."""
    from lora_audit.cli._common import err_lines, fail, internal_error
    from lora_audit.errors import LoraAuditError

    if _state.DEBUG:
        import traceback

        err_lines(traceback.format_exc())
    if isinstance(exc, LoraAuditError):
        fail(str(exc))
        return int(exc.exit_code)
    fail(internal_error(exc))
    return int(ExitCode.INTERNAL)


_DID_YOU_MEAN = re.compile(r"\.?\s*(Did you mean .*)$", re.DOTALL)
#: Wording of typer's value checks that adds nothing: "Value error, ", ", unable to parse …".
_NOISE = re.compile(r"(?<=: )Value error, |, unable to parse string as an? \w+")


def usage_line(exc: Any, *, command: str | None = None) -> str:
    """``lora-audit: error: <what> — <how to fix>`` for one of click's errors.

    ``command`` names the subcommand when the error does not say (the parser's own errors).

    Examples
    --------
    ``lora-audit: error: no such option: --energi — did you mean --energy? (see 'lora-audit
    inspect --help')``
    """
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        where = command_path(ctx)
    else:
        where = PROG if command is None else f"{PROG} {command}"
    fixes: list[str] = []
    if isinstance(exc, _click_errors.NoSuchOption):
        what = exc.message
        if exc.possibilities:
            fixes.append(f"did you mean {' or '.join(sorted(exc.possibilities))}?")
    else:
        what = exc.format_message()
        if (match := _DID_YOU_MEAN.search(what)) is not None:
            what = what[: match.start()]
            fixes.append(match[1][0].lower() + match[1][1:])
    what = _NOISE.sub("", " ".join(what.split())).rstrip(".")
    what = what[:1].lower() + what[1:] if what[1:2].islower() else what
    if isinstance(exc, _click_errors.MissingParameter) and ctx is not None:
        fixes.append(f"usage: {where} {' '.join(_usage(ctx))}")
    see = f"see '{where} --help'"
    fix = f"{' '.join(fixes)} ({see})" if fixes else see
    return f"{PROG}: error: {what} — {fix}"


def _usage(ctx: Any) -> list[str]:
    try:
        return [str(piece) for piece in ctx.command.collect_usage_pieces(ctx)]
    except Exception:  # pragma: no cover - the hint is a courtesy
        return []


def command_path(ctx: Any) -> str:
    """``lora-audit inspect`` for the context of ``inspect`` (whatever the program name);
    ``lora-audit`` for the root's context or ``None``."""
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:
        names.append(str(ctx.info_name))
        ctx = ctx.parent
    return " ".join([PROG, *reversed(names)])
