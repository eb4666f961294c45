"""``lora-audit inspect``: parse → run → render → exit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lora_audit.choices import device_name, method_name
from lora_audit.cli._common import (
    emit_report,
    exit_code_for,
    fail,
    load_reported,
    note,
    outputs,
    preflight,
    progress_bar,
    run_guarded,
    warn,
)
from lora_audit.cli._intruder_options import (
    IntruderEpsilonOption,
    IntruderLayersOption,
    IntrudersOption,
    IntruderTopOption,
)
from lora_audit.cli._jsonl import appends
from lora_audit.cli._options import (
    JSONL,
    AlphaOption,
    BaseKOption,
    BaseOption,
    BasePartialOption,
    ColorChoice,
    ColorOption,
    ConfigOption,
    CoverageOption,
    DebugOption,
    Device,
    DeviceOption,
    EnergyOption,
    ForceOption,
    FuseIntoOption,
    IncludeCheckpointsOption,
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
    ResumeOption,
)
from lora_audit.cli._usage import examples
from lora_audit.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from lora_audit.commands.inspect import AuditOptions
    from lora_audit.commands.intruders import IntruderOptions
    from lora_audit.formats.discovery import Discovery
    from lora_audit.linalg.quantize import Scheme
    from lora_audit.report import InspectManyReport
    from lora_audit.report.full_finetune import FullFinetuneReport

EXAMPLES = examples(
    "lora-audit inspect ./my-adapter",
    "lora-audit inspect adapter_model.safetensors -e 0.95 -f json -o report.json",
    "lora-audit inspect ./my-adapter --base ./base-model --fuse-into q8_0,q4_0,nf4",
    "lora-audit inspect ./fine-tuned-model --base ./base-model",
    "lora-audit inspect ./adapters -f jsonl -o census.jsonl --resume census.jsonl",
)


def inspect_command(
    adapters: Annotated[
        list[Path],
        typer.Argument(
            help="A PEFT adapter directory or a .safetensors file (PEFT, kohya, LyCORIS, "
            "diffusers), a Hugging Face cache directory (hub/models--org--name), or several, "
            "or directories to search for adapters. With --base, a fully fine-tuned model "
            "(file, directory or sharded index): the spectra of W_tuned − W_base.",
            show_default=False,
            metavar="ADAPTER",
        ),
    ],
    energy: EnergyOption = None,
    output_format: InspectFormatOption = None,
    output: OutputOption = None,
    force: ForceOption = False,
    color: ColorOption = ColorChoice.AUTO,
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
    fuse_into: FuseIntoOption = None,
    intruders: IntrudersOption = False,
    intruder_top: IntruderTopOption = None,
    intruder_epsilon: IntruderEpsilonOption = None,
    intruder_layers: IntruderLayersOption = None,
    include_checkpoints: IncludeCheckpointsOption = False,
    resume: ResumeOption = None,
    config: ConfigOption = None,
    no_config: NoConfigOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Per-layer singular spectra, stable and effective ranks, energy ranks and advice.

    With several adapters (named, or found below a directory): each one's report, then one
    summary row per adapter; exit 3 when one could not be read. --format jsonl writes one
    line per adapter as it finishes, then a summary line, in bounded memory whatever the count.

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
        from lora_audit.commands.inspect import AuditOptions
        from lora_audit.commands.inspect_base import BaseOptions, inspect_with_base
        from lora_audit.commands.many import discovery_note, find_adapters
        from lora_audit.engine.device import EngineOptions

        read_settings(config=config, no_config=no_config)
        options = AuditOptions(
            energy=number("energy", energy),
            coverage=number("coverage", coverage),
            engine=EngineOptions(device=device_name(device), method=method_name(method)),
            settings_file=settings_file_shown(),
        )
        fmt = report_format(output_format, offered=InspectFormat, command="inspect")
        if not appends(output, resume):  # --resume FILE -o FILE appends to it
            preflight(output)  # a bad -o or --plot fails before any work
        plot_request(plot, layers=plot_layers)
        if base is not None or base_k is not None or base_partial:
            from lora_audit.commands.base_weights import check_base_options

            check_base_options(base, k=base_k, partial=base_partial)  # before any work
        schemes = _fuse_schemes(fuse_into, base=base)
        intruder_options = _intruder_options(
            intruders, top=intruder_top, epsilon=intruder_epsilon, layers=intruder_layers
        )
        if intruder_options is not None and base is None:
            raise UsageError("--intruders needs --base", hint="add --base path/to/base-model")
        if base is not None and len(adapters) == 1:
            from lora_audit.formats.full_model import is_full_model

            if is_full_model(adapters[0]):  # a full fine-tune: the spectra of W_tuned − W_base
                if schemes or intruder_options is not None:
                    raise UsageError(
                        "--fuse-into and --intruders are for LoRA adapters, not full models",
                        hint="drop them to audit the full fine-tune's ΔW",
                    )
                full = _inspect_full(adapters[0], base=base, options=options)
                emit_report(full, fmt.value, output=output, color=color.value)
                return int(ExitCode.OK)
        streamed = _streamed(fmt.value, resume=resume, plot=plot, base=base)
        discovery = find_adapters(
            adapters, include_checkpoints=include_checkpoints, streamed=streamed
        )
        for item in discovery.found:  # no output may replace an adapter found below a path
            outputs().add_adapter(item.path)
        if (found_note := discovery_note(discovery)) is not None:
            note(found_note)
        if streamed:
            from lora_audit.cli._jsonl import run_lines
            from lora_audit.commands.stream import LineRun

            run = LineRun(command="inspect", options=options)
            return run_lines(
                discovery.found, run=run, alpha=alpha, input_format=input_format.value,
                output=output, resume=resume,
            )  # fmt: skip
        if len(discovery.found) != 1:
            if plot is not None or base is not None:
                raise UsageError(
                    f"{'--plot' if plot is not None else '--base'} takes one adapter; "
                    f"{len(discovery.found)} were found",
                    hint="name one adapter, or leave the option out",
                )
            many = _inspect_many(discovery, options, alpha=alpha, input_format=input_format)
            emit_report(many, fmt.value, output=output)
            return int(exit_code_for(many))
        if discovery.found[0].error is not None:
            raise discovery.found[0].error
        adapter = discovery.found[0].path
        loaded = load_reported(adapter, alpha=alpha, input_format=input_format.value)
        request = plot_request(plot, layers=plot_layers, names=[x.name for x in loaded.layers])
        base_options = (
            None
            if base is None
            else BaseOptions(
                path=base,
                k=base_k,
                partial=base_partial,
                intruders=intruder_options,
                fuse_into=schemes,
            )
        )
        extra = [name for name, on in (("intruders", intruder_options), ("fuse", schemes)) if on]
        passes = 1 if base is None else 2 + len(extra)  # spectra, base, intruders, fuse survival
        label = "spectra" if base is None else " + ".join(["spectra", "base", *extra])
        with progress_bar(passes * len(loaded.layers), description=label) as advance:
            report = inspect_with_base(
                loaded, options=options, base=base_options, progress=advance, warn=warn
            )
        draw(report, request)
        emit_report(report, fmt.value, output=output, color=color.value)
        return int(ExitCode.OK)

    run_guarded(body, force=force, inputs=adapters, base=base)


def _inspect_full(tuned: Path, *, base: Path, options: AuditOptions) -> FullFinetuneReport:
    """``inspect --base BASE TUNED`` for a full model, one progress step per tensor."""
    from lora_audit.commands.inspect_full import FullOptions, inspect_full
    from lora_audit.formats.full_model import open_pair

    count = len(open_pair(base, tuned)[2].pairs)
    full = FullOptions(energy=options.energy, engine=options.engine)
    with progress_bar(count, description="ΔW spectra") as advance:
        return inspect_full(tuned, base=base, options=full, progress=advance, warn=warn)


def _fuse_schemes(text: str | None, *, base: Path | None) -> tuple[Scheme, ...]:
    """The schemes ``--fuse-into`` names; it needs ``--base``."""
    if text is None:
        return ()
    from lora_audit.decisions.fuse_advice import parse_schemes

    if base is None:
        raise UsageError("--fuse-into needs --base", hint="add --base path/to/base-model")
    return parse_schemes(text)


def _streamed(fmt: str, *, resume: Path | None, plot: Path | None, base: Path | None) -> bool:
    """Whether the run writes jsonl lines; the options that need the whole run are refused."""
    if fmt != JSONL:
        if resume is not None:
            raise UsageError("--resume needs --format jsonl", hint="add --format jsonl")
        return False
    if plot is not None or base is not None:
        raise UsageError(
            f"{'--plot' if plot is not None else '--base'} is not available with --format jsonl",
            hint="use --format json for one adapter with --plot or --base",
        )
    return True


def _intruder_options(
    on: bool, *, top: int | None, epsilon: float | None, layers: str | None
) -> IntruderOptions | None:
    """``--intruders`` and its settings, checked before any work (``None`` when off)."""
    from lora_audit.commands.intruders import IntruderOptions, check_intruder_request

    if not on:
        given = [
            flag
            for flag, value in (
                ("--intruder-top", top),
                ("--intruder-epsilon", epsilon),
                ("--intruder-layers", layers),
            )
            if value is not None
        ]
        if given:
            raise UsageError(f"{given[0]} needs --intruders", hint="add --intruders")
        return None
    options = IntruderOptions(layers=layers)
    if top is not None:
        options = replace(options, top=top)
    if epsilon is not None:
        options = replace(options, epsilon=epsilon)
    check_intruder_request(options)
    return options


def _inspect_many(
    discovery: Discovery, options: AuditOptions, *, alpha: float | None, input_format: InputFormat
) -> InspectManyReport:
    """Several adapters, audited side by side with one progress bar over them."""
    from lora_audit.commands.many import audit_all, inspect_many

    total = len(discovery.found)
    with progress_bar(total, description=f"{total} adapters") as advance:
        outcomes = audit_all(
            discovery.found,
            options=options,
            alpha=alpha,
            input_format=input_format.value,
            warn=warn,
            on_error=lambda exc: fail(str(exc)),
            progress=advance,
        )
    return inspect_many(outcomes, options=options)
