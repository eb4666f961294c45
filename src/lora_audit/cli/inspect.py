"""``lora-audit inspect``: parse → run → render → exit."""

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
    BaseKOption,
    BaseOption,
    BasePartialOption,
    ConfigOption,
    CoverageOption,
    DebugOption,
    Device,
    DeviceOption,
    EnergyOption,
    ForceOption,
    InputFormat,
    InputFormatOption,
    InspectFormat,
    InspectFormatOption,
    Method,
    MethodOption,
    NoConfigOption,
    OutputOption,
    PlotLayersOption,
    PlotOption,
    QuietOption,
)
from lora_audit.cli._usage import examples
from lora_audit.errors import ExitCode

EXAMPLES = examples(
    "lora-audit inspect ./my-adapter",
    "lora-audit inspect adapter_model.safetensors -e 0.95 -f json -o report.json",
    "lora-audit inspect ./my-adapter --plot spectra.png",
    "lora-audit inspect ./my-adapter --base ./base-model",
)


def inspect_command(
    adapter: Annotated[
        Path,
        typer.Argument(
            help="A PEFT adapter directory or a .safetensors file (PEFT, kohya, LyCORIS, "
            "diffusers).",
            show_default=False,
        ),
    ],
    energy: EnergyOption = None,
    output_format: InspectFormatOption = None,
    output: OutputOption = None,
    force: ForceOption = False,
    alpha: AlphaOption = None,
    coverage: CoverageOption = None,
    device: DeviceOption = Device.AUTO,
    method: MethodOption = Method.AUTO,
    input_format: InputFormatOption = InputFormat.AUTO,
    plot: PlotOption = None,
    plot_layers: PlotLayersOption = None,
    base: BaseOption = None,
    base_k: BaseKOption = None,
    base_partial: BasePartialOption = False,
    config: ConfigOption = None,
    no_config: NoConfigOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Per-layer singular spectra, stable and effective ranks, energy ranks and advice.

    energy, coverage and format come from the flags, else from the settings file
    (lora-audit.toml, or [tool.lora-audit] in pyproject.toml), else the defaults.
    """

    def body() -> int:
        from lora_audit.cli._plot import draw, plot_request
        from lora_audit.cli._settings import (
            number,
            read_settings,
            report_format,
            settings_file_shown,
        )
        from lora_audit.commands.inspect import AuditOptions, inspect_adapter
        from lora_audit.engine.device import EngineOptions

        read_settings(config=config, no_config=no_config)
        options = AuditOptions(
            energy=number("energy", energy),
            coverage=number("coverage", coverage),
            engine=EngineOptions(device=device.value, method=method.value),  # type: ignore[arg-type]
            settings_file=settings_file_shown(),
        )
        fmt = report_format(output_format, offered=InspectFormat, command="inspect")
        preflight(output)  # a bad -o or --plot fails before any work
        plot_request(plot, layers=plot_layers)
        if base is not None or base_k is not None or base_partial:
            from lora_audit.commands.base_weights import check_base_options

            check_base_options(base, k=base_k, partial=base_partial)  # before any work
        loaded = load_reported(adapter, alpha=alpha, input_format=input_format.value)
        request = plot_request(plot, layers=plot_layers, names=[x.name for x in loaded.layers])
        with progress_bar(len(loaded.layers), description="spectra") as advance:
            report = inspect_adapter(loaded, options=options, progress=advance, warn=warn)
        if base is not None:
            from lora_audit.commands.inspect_base import BaseOptions, audit_base

            base_options = BaseOptions(path=base, k=base_k, partial=base_partial)
            with progress_bar(len(loaded.layers), description="base") as advance:
                report = audit_base(
                    report,
                    loaded,
                    options=base_options,
                    engine=options.engine,
                    progress=advance,
                    warn=warn,
                )
        draw(report, request)
        emit_report(report, fmt.value, output=output)
        return int(ExitCode.OK)

    run_guarded(body, force=force, inputs=[adapter], base=base)
