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
    CompareFormatOption,
    ConfigOption,
    DebugOption,
    ForceOption,
    InputFormat,
    InputFormatOption,
    NoConfigOption,
    OutputOption,
    PlotOption,
    QuietOption,
)
from lora_audit.cli._usage import examples
from lora_audit.errors import ExitCode, UsageError

EXAMPLES = examples(
    "lora-audit compare run-a/ run-b/",
    "lora-audit compare adapter.safetensors adapter-compressed.safetensors -k 8 -f json",
    "lora-audit compare run-a/ run-b/ --plot overlap.png",
)

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
    output_format: CompareFormatOption = None,
    output: OutputOption = None,
    force: ForceOption = False,
    plot: PlotOption = None,
    alpha: AlphaOption = None,
    input_format: InputFormatOption = InputFormat.AUTO,
    config: ConfigOption = None,
    no_config: NoConfigOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Per layer: relative difference ‖ΔW_A − ΔW_B‖F/‖ΔW_A‖F and singular-subspace overlap.

    format comes from the flag, else from the settings file, else table.
    """

    def body() -> int:
        from lora_audit.cli._plot import draw, plot_request
        from lora_audit.cli._settings import read_settings, report_format
        from lora_audit.commands.compare import compare_adapters, pair_layers

        read_settings(config=config, no_config=no_config)
        fmt = report_format(output_format, offered=CompareFormat, command="compare")

        if top_k < 1:
            raise UsageError(f"--top-k {top_k} must be at least 1", hint="e.g. --top-k 4")
        preflight(output)
        request = plot_request(plot)
        loaded_a = load_reported(adapter_a, alpha=alpha, input_format=input_format.value)
        loaded_b = load_reported(adapter_b, alpha=alpha, input_format=input_format.value)
        pairs = len(pair_layers(loaded_a.layers, loaded_b.layers).pairs)
        with progress_bar(pairs, description="layers") as advance:
            report = compare_adapters(loaded_a, loaded_b, top_k=top_k, progress=advance, warn=warn)
        draw(report, request)
        emit_report(report, fmt.value, output=output)
        return int(ExitCode.OK)

    run_guarded(body, force=force, inputs=[adapter_a, adapter_b])
