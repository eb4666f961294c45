"""The ``lora-audit`` command: wires the subcommands together; nothing else happens here."""

from __future__ import annotations

import typer

from lora_audit import DISTRIBUTION, HOME, __version__
from lora_audit.cli import _state
from lora_audit.cli.check import check_command
from lora_audit.cli.compare import compare_command
from lora_audit.cli.compress import compress_command
from lora_audit.cli.inspect import inspect_command
from lora_audit.cli.merge import merge_command
from lora_audit.cli.trend import trend_command

app = typer.Typer(
    name="lora-audit",
    help="How much of a LoRA adapter's rank is actually used — and how to give the rest back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lora-audit {__version__} ({DISTRIBUTION}, {HOME})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        callback=_version,
        is_eager=True,
        help="Print the version, the distribution name and the project's home, and exit.",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show a traceback when a command fails."),
) -> None:
    """Exit codes: 0 ok · 1 policy findings · 2 usage error · 3 unreadable or invalid input.

    130 interrupted (^C) · 143 terminated (SIGTERM).
    """
    _state.DEBUG = debug


app.command("inspect")(inspect_command)
app.command("check")(check_command)
app.command("compress")(compress_command)
app.command("merge")(merge_command)
app.command("trend")(trend_command)
app.command("compare")(compare_command)


def main() -> None:
    """Console-script entry point."""
    app()
