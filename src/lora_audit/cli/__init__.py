"""The ``lora-audit`` command: wires the subcommands together; nothing else happens here.

Each subcommand is registered with ``cls=Command`` (plain help, one-line usage errors: see
:mod:`lora_audit.cli._usage`) and the examples its help ends with.
"""

from __future__ import annotations

import typer

from lora_audit import DISTRIBUTION, HOME, __version__
from lora_audit.cli import _state
from lora_audit.cli._usage import Command, Group, examples
from lora_audit.cli.check import EXAMPLES as CHECK_EXAMPLES
from lora_audit.cli.check import check_command
from lora_audit.cli.compare import EXAMPLES as COMPARE_EXAMPLES
from lora_audit.cli.compare import compare_command
from lora_audit.cli.compress import EXAMPLES as COMPRESS_EXAMPLES
from lora_audit.cli.compress import compress_command
from lora_audit.cli.extract import EXAMPLES as EXTRACT_EXAMPLES
from lora_audit.cli.extract import extract_command
from lora_audit.cli.inspect import EXAMPLES as INSPECT_EXAMPLES
from lora_audit.cli.inspect import inspect_command
from lora_audit.cli.merge import EXAMPLES as MERGE_EXAMPLES
from lora_audit.cli.merge import merge_command
from lora_audit.cli.trend import EXAMPLES as TREND_EXAMPLES
from lora_audit.cli.trend import trend_command

app = typer.Typer(
    name="lora-audit",
    cls=Group,
    help="How much of a LoRA adapter's rank is actually used — and how to give the rest back.",
    epilog=examples(
        "lora-audit inspect ./my-adapter",
        "lora-audit check ./my-adapter -f github",
        "lora-audit compress ./my-adapter -o ./my-adapter-small -e 0.99",
        "lora-audit COMMAND --help    (each command's options and examples)",
    )
    + "\n\n\b\nExit codes:\n  0 ok · 1 policy findings · 2 usage error\n"
    "  3 an input cannot be read or is invalid, or an output cannot be written\n"
    "  130 interrupted (^C) · 143 terminated (SIGTERM)",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
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
    debug: bool = typer.Option(
        False,
        "--debug",
        help="Show a traceback with an error (the exit code stays the same); also accepted "
        "after the command.",
    ),
) -> None:
    """How much of a LoRA adapter's rank is actually used — and how to give the rest back."""
    if debug:
        _state.DEBUG = True


app.command(
    "inspect",
    cls=Command,
    epilog=INSPECT_EXAMPLES,
    short_help="Per-layer spectra, ranks, wasted rank and retrain advice.",
)(inspect_command)
app.command(
    "check",
    cls=Command,
    epilog=CHECK_EXAMPLES,
    short_help="Gate adapters on a waste policy (exit 1 on findings).",
)(check_command)
app.command(
    "compress",
    cls=Command,
    epilog=COMPRESS_EXAMPLES,
    short_help="Rewrite an adapter at a smaller rank, optimally.",
)(compress_command)
app.command(
    "merge",
    cls=Command,
    epilog=MERGE_EXAMPLES,
    short_help="Merge adapters exactly: Σ wᵢ·ΔWᵢ at the rank it needs.",
)(merge_command)
app.command(
    "trend",
    cls=Command,
    epilog=TREND_EXAMPLES,
    short_help="Ranks of every layer across training checkpoints.",
)(trend_command)
app.command(
    "compare",
    cls=Command,
    epilog=COMPARE_EXAMPLES,
    short_help="How two adapters differ, layer by layer.",
)(compare_command)
app.command(
    "extract",
    cls=Command,
    epilog=EXTRACT_EXAMPLES,
    short_help="The optimal LoRA of a full fine-tune (TUNED − BASE), as PEFT.",
)(extract_command)


def main() -> None:
    """Console-script entry point."""
    app()
