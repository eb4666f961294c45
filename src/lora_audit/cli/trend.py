"""``lora-audit trend``: parse → run → render → exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lora_audit.cli._common import (
    check_fraction,
    emit_report,
    exit_code_for,
    load_reported,
    outputs,
    preflight,
    progress_bar,
    run_guarded,
    warn,
)
from lora_audit.cli._options import (
    AlphaOption,
    Device,
    DeviceOption,
    EnergyOption,
    ForceOption,
    InputFormat,
    InputFormatOption,
    Method,
    MethodOption,
    OutputOption,
    PlotOption,
    TrendFormat,
)
from lora_audit.errors import UsageError


def trend_command(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="The checkpoints of one run (directories or .safetensors files, any order), "
            "or one directory that holds them (e.g. a trainer's output_dir).",
            show_default=False,
        ),
    ],
    energy: EnergyOption = 0.99,
    window: Annotated[
        int,
        typer.Option(
            "--window",
            help="Drift is judged over this many final checkpoints (at least 2).",
        ),
    ] = 3,
    min_rise: Annotated[
        float,
        typer.Option(
            "--min-rise",
            help="A stable rank or energy rank that never falls over the window and rises by "
            "more than this fraction of its starting value is flagged as drift.",
        ),
    ] = 0.1,
    fail_on_drift: Annotated[
        bool,
        typer.Option("--fail-on-drift", help="Exit 1 when drift is flagged (default: exit 0)."),
    ] = False,
    output_format: Annotated[
        TrendFormat,
        typer.Option(
            "--format",
            "-f",
            help="Report format: table, json, markdown (for $GITHUB_STEP_SUMMARY) or github "
            "(workflow annotations).",
        ),
    ] = TrendFormat.TABLE,
    output: OutputOption = None,
    force: ForceOption = False,
    plot: PlotOption = None,
    alpha: AlphaOption = None,
    device: DeviceOption = Device.AUTO,
    method: MethodOption = Method.AUTO,
    input_format: InputFormatOption = InputFormat.AUTO,
) -> None:
    """Stable rank, energy rank and ‖ΔW‖F of every layer across checkpoints, in step order."""

    def body() -> int:
        from lora_audit.cli._plot import draw, plot_request
        from lora_audit.commands.inspect import AuditOptions
        from lora_audit.commands.trend import TrendOptions, expand_run, trend_of
        from lora_audit.engine.device import EngineOptions

        if window < 2:
            raise UsageError(f"--window {window} must be at least 2", hint="e.g. --window 3")
        if not min_rise >= 0:
            raise UsageError(f"--min-rise {min_rise:g} must be ≥ 0", hint="e.g. --min-rise 0.1")
        options = TrendOptions(
            audit=AuditOptions(
                energy=check_fraction("--energy", energy),
                engine=EngineOptions(device=device.value, method=method.value),  # type: ignore[arg-type]
            ),
            window=window,
            min_rise=min_rise,
            fail_on_drift=fail_on_drift,
        )
        preflight(output)
        request = plot_request(plot)
        paths, notes = expand_run(checkpoints)
        for path in paths:
            outputs().add_adapter(path)
        if len(paths) < 2:
            raise UsageError(
                f"trend needs at least two checkpoints; {len(paths)} found",
                hint="name them all (run/checkpoint-*/) or the directory that holds them",
            )
        for message in notes:
            warn(message)
        loaded = [load_reported(p, alpha=alpha, input_format=input_format.value) for p in paths]
        total = sum(len(adapter.layers) for adapter in loaded)
        with progress_bar(total, description="checkpoints") as advance:
            report = trend_of(loaded, options=options, progress=advance, warn=warn, notes=notes)
        draw(report, request)
        emit_report(report, output_format.value, output=output)
        return exit_code_for(report)

    run_guarded(body, force=force, inputs=checkpoints)
