"""``lora-audit compare``: parse → run → render → exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lora_audit.cli._common import (
    emit_report,
    load_reported,
    preflight,
    progress_bar,
    run_guarded,
    warn,
)
from lora_audit.cli._options import (
    AlphaOption,
    CompareFormat,
    ForceOption,
    InputFormat,
    InputFormatOption,
    OutputOption,
    PlotOption,
)
from lora_audit.errors import ExitCode, UsageError

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
        CompareFormat,
        typer.Option(
            "--format",
            "-f",
            help="Report format: table, json, markdown (for $GITHUB_STEP_SUMMARY) or github "
            "(workflow annotations).",
        ),
    ] = CompareFormat.TABLE,
    output: OutputOption = None,
    force: ForceOption = False,
    plot: PlotOption = None,
    alpha: AlphaOption = None,
    input_format: InputFormatOption = InputFormat.AUTO,
) -> None:
    """Per layer: relative difference ‖ΔW_A − ΔW_B‖F/‖ΔW_A‖F and singular-subspace overlap."""

    def body() -> int:
        from lora_audit.cli._plot import draw, plot_request
        from lora_audit.commands.compare import compare_adapters, match_layers

        if top_k < 1:
            raise UsageError(f"--top-k {top_k} must be at least 1", hint="e.g. --top-k 4")
        preflight(output)
        request = plot_request(plot)
        loaded_a = load_reported(adapter_a, alpha=alpha, input_format=input_format.value)
        loaded_b = load_reported(adapter_b, alpha=alpha, input_format=input_format.value)
        pairs = len(match_layers(loaded_a.layers, loaded_b.layers).pairs)
        with progress_bar(pairs, description="layers") as advance:
            report = compare_adapters(loaded_a, loaded_b, top_k=top_k, progress=advance, warn=warn)
        draw(report, request)
        emit_report(report, output_format.value, output=output)
        return int(ExitCode.OK)

    run_guarded(body, force=force, inputs=[adapter_a, adapter_b])
