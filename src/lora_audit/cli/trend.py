"""``lora-audit trend``: parse → run → render → exit."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lora_audit.choices import device_name, method_name
from lora_audit.cli._common import (
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
    ColorChoice,
    ColorOption,
    ConfigOption,
    DebugOption,
    Device,
    DeviceOption,
    EnergyOption,
    ForceOption,
    InputFormat,
    InputFormatOption,
    Method,
    MethodOption,
    NoConfigOption,
    OutputOption,
    PlotOption,
    QuietOption,
    TrendFormat,
    TrendFormatOption,
)
from lora_audit.cli._usage import examples
from lora_audit.errors import UsageError

if TYPE_CHECKING:
    from lora_audit.commands.trend import TrendOptions
    from lora_audit.report import TrendReport

EXAMPLES = examples(
    "lora-audit trend output_dir/",
    "lora-audit trend run/checkpoint-*/ --window 4 --fail-on-drift",
    "lora-audit trend output_dir/ -f json -o trend.json --plot trend.png",
)


def trend_command(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="The checkpoints of one run (directories or .safetensors files, any order), "
            "or one directory that holds them (e.g. a trainer's output_dir), or one trend "
            "report to read back (.json: trend -f json, or output_dir/lora-audit/trend.json).",
            show_default=False,
            metavar="CHECKPOINT",
        ),
    ],
    energy: EnergyOption = None,
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
    output_format: TrendFormatOption = None,
    output: OutputOption = None,
    force: ForceOption = False,
    color: ColorOption = ColorChoice.AUTO,
    plot: PlotOption = None,
    alpha: AlphaOption = None,
    device: DeviceOption = Device.AUTO,
    method: MethodOption = Method.AUTO,
    input_format: InputFormatOption = InputFormat.AUTO,
    config: ConfigOption = None,
    no_config: NoConfigOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Stable rank, energy rank and ‖ΔW‖F of every layer across checkpoints, in step order.

    energy and format come from the flags, else from the settings file (lora-audit.toml,
    or [tool.lora-audit] in pyproject.toml), else the defaults.
    """

    def body() -> int:
        from lora_audit.cli._plot import draw, plot_request
        from lora_audit.cli._settings import (
            number,
            read_settings,
            report_format,
            settings_file_shown,
        )
        from lora_audit.commands.inspect import AuditOptions
        from lora_audit.commands.trend import TrendOptions
        from lora_audit.commands.trend_file import is_trend_file, read_trend_file, retrend
        from lora_audit.engine.device import EngineOptions

        read_settings(config=config, no_config=no_config)

        if window < 2:
            raise UsageError(f"--window {window} must be at least 2", hint="e.g. --window 3")
        if not min_rise >= 0:
            raise UsageError(f"--min-rise {min_rise:g} must be ≥ 0", hint="e.g. --min-rise 0.1")
        options = TrendOptions(
            audit=AuditOptions(
                energy=number("energy", energy),
                engine=EngineOptions(device=device_name(device), method=method_name(method)),
                settings_file=settings_file_shown(),
            ),
            window=window,
            min_rise=min_rise,
            fail_on_drift=fail_on_drift,
        )
        fmt = report_format(output_format, offered=TrendFormat, command="trend")
        preflight(output)
        request = plot_request(plot)
        if len(checkpoints) == 1 and is_trend_file(checkpoints[0]):
            if alpha is not None or input_format is not InputFormat.AUTO:
                raise UsageError(
                    "--alpha and --input-format apply to checkpoints, not to a trend file",
                    hint="leave them out, or name the checkpoints",
                )
            outputs().add_input(checkpoints[0])
            report = retrend(
                read_trend_file(checkpoints[0]),
                window=window,
                min_rise=min_rise,
                fail_on_drift=fail_on_drift,
                energy=_asked_energy(energy),
                warn=warn,
            )
        else:
            report = _audited(checkpoints, options, alpha=alpha, input_format=input_format)
        draw(report, request)
        emit_report(report, fmt.value, output=output, color=color.value)
        return exit_code_for(report)

    run_guarded(body, force=force, inputs=checkpoints)


def _audited(
    checkpoints: list[Path],
    options: TrendOptions,
    *,
    alpha: float | None,
    input_format: InputFormat,
) -> TrendReport:
    """Read and audit the checkpoints ``checkpoints`` names (a run folder, or each)."""
    from lora_audit.commands.trend import expand_run, trend_of

    paths, notes = expand_run(checkpoints)
    for path in paths:
        outputs().add_adapter(path)
    if len(paths) < 2:
        written = paths[0] / "trend.json" if len(paths) == 1 else None
        raise UsageError(
            f"trend needs at least two checkpoints; {len(paths)} found",
            hint=f"to read the trend a training callback wrote, name the file: {written}"
            if written is not None and written.is_file()
            else "name them all (run/checkpoint-*/) or the directory that holds them",
        )
    for message in notes:
        warn(message)
    loaded = [load_reported(p, alpha=alpha, input_format=input_format.value) for p in paths]
    total = sum(len(adapter.layers) for adapter in loaded)
    with progress_bar(total, description="checkpoints") as advance:
        return trend_of(loaded, options=options, progress=advance, warn=warn, notes=notes)


def _asked_energy(flag: float | None) -> float | None:
    """τ as the flag or the settings file asks it; ``None`` when neither does."""
    from lora_audit.cli import _state
    from lora_audit.cli._settings import number

    source = _state.SETTINGS
    if flag is None and (source is None or source.values.get("energy") is None):
        return None
    return number("energy", flag)
