"""``lora-audit compare``: parse → run → render → exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lora_audit.cli._common import (
    emit,
    progress_bar,
    run_guarded,
    stdout_is_terminal,
    terminal_width,
    warn,
)
from lora_audit.cli._options import (
    AlphaOption,
    CompareFormat,
    InputFormat,
    InputFormatOption,
    OutputOption,
    PlotOption,
)
from lora_audit.errors import ExitCode, UsageError
from lora_audit.render import OutputFormat

_ADAPTER_HELP = "A PEFT adapter directory or a .safetensors file (PEFT, kohya, LyCORIS, diffusers)"


def compare_command(
    adapter_a: Annotated[
        Path, typer.Argument(help=f"{_ADAPTER_HELP}; the reference.", show_default=False)
    ],
    adapter_b: Annotated[Path, typer.Argument(help=f"{_ADAPTER_HELP}.", show_default=False)],
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k",
            "-k",
            help="Compare the subspaces of at most this many leading singular directions.",
        ),
    ] = 4,
    output_format: Annotated[
        CompareFormat, typer.Option("--format", "-f", help="Report format.")
    ] = CompareFormat.TABLE,
    output: OutputOption = None,
    plot: PlotOption = None,
    alpha: AlphaOption = None,
    input_format: InputFormatOption = InputFormat.AUTO,
) -> None:
    """Per layer: relative difference ‖ΔW_A − ΔW_B‖F/‖ΔW_A‖F and singular-subspace overlap."""

    def body() -> int:
        from lora_audit.cli._plot import draw, plot_request
        from lora_audit.compare import compare_adapters, match_layers
        from lora_audit.formats import load_adapter
        from lora_audit.render import render

        if top_k < 1:
            raise UsageError(f"--top-k {top_k} must be at least 1", hint="e.g. --top-k 4")
        request = plot_request(plot)
        loaded_a = load_adapter(adapter_a, alpha=alpha, input_format=input_format.value)
        loaded_b = load_adapter(adapter_b, alpha=alpha, input_format=input_format.value)
        for adapter in (loaded_a, loaded_b):
            for message in adapter.warnings:
                warn(f"{adapter.path}: {message}")
        pairs = len(match_layers(loaded_a.layers, loaded_b.layers).pairs)
        with progress_bar(pairs, description="layers") as advance:
            report = compare_adapters(loaded_a, loaded_b, top_k=top_k, progress=advance, warn=warn)
        draw(report, request)
        fmt = OutputFormat(output_format.value)
        color = output is None and fmt is OutputFormat.TABLE and stdout_is_terminal()
        emit(render(report, fmt, width=terminal_width(), color=color), output=output)
        return int(ExitCode.OK)

    run_guarded(body)
