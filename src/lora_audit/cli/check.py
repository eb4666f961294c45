"""``lora-audit check``: parse → run → render → exit (0 pass, 1 findings, 2 usage, 3 input)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lora_audit.choices import device_name, method_name
from lora_audit.cli._ci_outputs import (
    JunitXmlOption,
    NoStepSummaryOption,
    plan_extra_outputs,
    step_summary_file,
    write_extra_outputs,
)
from lora_audit.cli._common import (
    emit_report,
    exit_code_for,
    fail,
    note,
    outputs,
    preflight,
    progress_bar,
    run_guarded,
    warn,
)
from lora_audit.cli._jsonl import appends
from lora_audit.cli._options import (
    AlphaOption,
    ColorChoice,
    ColorOption,
    ConfigOption,
    CoverageOption,
    DebugOption,
    Device,
    DeviceOption,
    EnergyOption,
    ForceOption,
    IncludeCheckpointsOption,
    InputFormat,
    InputFormatOption,
    MaxLayerWasteOption,
    MaxWasteOption,
    Method,
    MethodOption,
    MinRankUsedOption,
    NoConfigOption,
    OutputOption,
    QuietOption,
    ResumeOption,
)
from lora_audit.cli._options import CheckFormat as OutputFormat
from lora_audit.cli._usage import examples
from lora_audit.errors import UsageError

if TYPE_CHECKING:
    from lora_audit.cli.settings_file import SettingsSource
    from lora_audit.decisions.check_rules import Policy
    from lora_audit.decisions.serving_targets import Target
    from lora_audit.engine.batches import Progress
    from lora_audit.engine.device import EngineOptions

EXAMPLES = examples(
    "lora-audit check ./my-adapter",
    "lora-audit check adapters/a adapters/b --max-waste 0.3 -f github",
    "lora-audit check ./my-adapter -f junit -o lora-audit.xml",
    "lora-audit check ./my-adapter --config ci/lora-audit.toml -q",
    "lora-audit check ./my-adapter --target vllm:max-lora-rank=32 --target llama.cpp",
)


def check_command(
    adapters: Annotated[
        list[Path],
        typer.Argument(
            help="Adapters (PEFT directories, .safetensors or .gguf files), or directories to "
            "search for them (several allowed).",
            show_default=False,
            metavar="ADAPTER",
        ),
    ],
    energy: EnergyOption = None,
    max_waste: MaxWasteOption = None,
    max_layer_waste: MaxLayerWasteOption = None,
    min_rank_used: MinRankUsedOption = None,
    coverage: CoverageOption = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            help="Also fail when this server will refuse the adapter or read it at other "
            "scales: vllm (max_lora_rank 16), vllm:max-lora-rank=N, llama.cpp or peft. "
            "Repeatable; replaces the settings file's target list.",
            show_default=False,
            metavar="SERVER",
        ),
    ] = None,
    config: ConfigOption = None,
    no_config: NoConfigOption = False,
    output_format: Annotated[
        OutputFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="Report format: table, json (the inspect reports plus findings), markdown "
            "(for $GITHUB_STEP_SUMMARY), github (workflow annotations), junit (XML) or jsonl "
            "(one line per adapter as it finishes, then a summary line; no --junit-xml, no "
            "step summary). Default table, or format in the settings file.",
            show_default=False,
        ),
    ] = None,
    output: OutputOption = None,
    junit_xml: JunitXmlOption = None,
    no_step_summary: NoStepSummaryOption = False,
    force: ForceOption = False,
    color: ColorOption = ColorChoice.AUTO,
    alpha: AlphaOption = None,
    device: DeviceOption = Device.AUTO,
    method: MethodOption = Method.AUTO,
    input_format: InputFormatOption = InputFormat.AUTO,
    include_checkpoints: IncludeCheckpointsOption = False,
    resume: ResumeOption = None,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Gate adapters on a policy: fail (exit 1) when one pays for rank it does not use.

    Policy: defaults < the settings file (lora-audit.toml, or [tool.lora-audit] in
    pyproject.toml, found upward from the working directory or named with --config) < flags.

    One run can serve a whole CI job: --format github prints annotations, --junit-xml FILE
    also writes JUnit XML, and when $GITHUB_STEP_SUMMARY is set the Markdown summary is
    appended to it (--no-step-summary turns that off).

    Exit codes: 0 every adapter passes · 1 policy findings · 2 usage error · 3 an adapter or
    the settings file cannot be read or is invalid (the worst over all adapters).
    """

    def body() -> int:
        from lora_audit.cli._settings import read_settings, report_format
        from lora_audit.cli.settings_file import policy_from
        from lora_audit.commands.check import run_check
        from lora_audit.decisions.serving_targets import parse_target
        from lora_audit.engine.device import EngineOptions

        targets = [parse_target(t) for t in target or ()]  # a usage error comes first
        source = read_settings(config=config, no_config=no_config)
        if not targets and source is not None:
            targets = [parse_target(t) for t in source.targets]
        fmt = report_format(output_format, offered=OutputFormat, command="check")
        if fmt is OutputFormat.JSONL or resume is not None:
            _jsonl_only(fmt, resume=resume, junit_xml=junit_xml)
        if not appends(output, resume):  # --resume FILE -o FILE appends to it
            preflight(output)
        plan_extra_outputs(junit_xml=junit_xml)
        summary = step_summary_file(main_format=fmt.value, output=output, disabled=no_step_summary)
        flags = _validated_flags(
            energy=energy,
            coverage=coverage,
            max_waste=max_waste,
            max_layer_waste=max_layer_waste,
            min_rank_used=min_rank_used,
        )
        if fmt is OutputFormat.JSONL:
            return _check_lines(
                adapters, policy=policy_from(flags, source), source=source, targets=targets,
                engine=EngineOptions(device=device_name(device), method=method_name(method)),
                alpha=alpha, input_format=input_format.value,
                include_checkpoints=include_checkpoints, output=output, resume=resume,
            )  # fmt: skip
        report = run_check(
            adapters,
            policy=policy_from(flags, source),
            policy_file=None if source is None else source.path,
            engine=EngineOptions(device=device_name(device), method=method_name(method)),
            alpha=alpha,
            input_format=input_format.value,
            include_checkpoints=include_checkpoints,
            warn=warn,
            on_error=lambda exc: fail(str(exc)),
            progress=_progress,
            notice=note,
            claim=outputs().add_adapter,
            targets=targets,
        )
        emit_report(report, fmt.value, output=output, color=color.value)
        write_extra_outputs(report, junit_xml=junit_xml, step_summary=summary)
        return exit_code_for(report)

    run_guarded(body, force=force, inputs=adapters)


def _jsonl_only(fmt: OutputFormat, *, resume: Path | None, junit_xml: Path | None) -> None:
    """``--resume`` needs ``--format jsonl``, which writes no whole-run JUnit file."""
    if fmt is not OutputFormat.JSONL:
        raise UsageError("--resume needs --format jsonl", hint="add --format jsonl")
    if junit_xml is not None:
        raise UsageError(
            "--junit-xml is not available with --format jsonl (JUnit XML is written for the "
            "whole run at its end)",
            hint="use --format json or junit, or leave --junit-xml out",
        )


def _check_lines(
    adapters: list[Path],
    *,
    policy: Policy,
    source: SettingsSource | None,
    targets: list[Target],
    engine: EngineOptions,
    alpha: float | None,
    input_format: str,
    include_checkpoints: bool,
    output: Path | None,
    resume: Path | None,
) -> int:
    """``check --format jsonl``: the lines, and the exit code of their summary."""
    from lora_audit.cli._jsonl import run_lines
    from lora_audit.commands.check import display_path
    from lora_audit.commands.inspect import AuditOptions
    from lora_audit.commands.many import discovery_note, find_adapters
    from lora_audit.commands.stream import LineRun

    policy_file = display_path(None if source is None else source.path)
    options = AuditOptions(
        energy=policy.energy, coverage=policy.coverage, engine=engine, settings_file=policy_file
    )
    run = LineRun(
        command="check", options=options, policy=policy, policy_file=policy_file,
        targets=tuple(targets),
    )  # fmt: skip
    discovery = find_adapters(adapters, include_checkpoints=include_checkpoints, streamed=True)
    for item in discovery.found:
        outputs().add_adapter(item.path)
    if (found_note := discovery_note(discovery)) is not None:
        note(found_note)
    return run_lines(
        discovery.found, run=run, alpha=alpha, input_format=input_format, output=output,
        resume=resume,
    )  # fmt: skip


def _validated_flags(**given: float | int | None) -> dict[str, float | int]:
    """The policy flags the user gave, by field name; an invalid value is a usage error."""
    from lora_audit.commands.options import policy_settings

    return policy_settings(**given)


def _progress(path: str, layers: int) -> AbstractContextManager[Progress | None]:
    return progress_bar(layers, description=path)
