"""``lora-audit check``: parse → run → render → exit (0 pass, 1 findings, 2 usage, 3 input)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lora_audit.cli._ci_outputs import (
    JunitXmlOption,
    NoStepSummaryOption,
    plan_extra_outputs,
    step_summary_file,
    write_extra_outputs,
)
from lora_audit.cli._common import (
    emit_report,
    err,
    exit_code_for,
    outputs,
    preflight,
    progress_bar,
    run_guarded,
    warn,
)
from lora_audit.cli._options import (
    AlphaOption,
    ConfigOption,
    Device,
    DeviceOption,
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
    PolicyCoverageOption,
    PolicyEnergyOption,
)
from lora_audit.errors import UsageError
from lora_audit.render import OutputFormat

if TYPE_CHECKING:
    from lora_audit.engine.batches import Progress


def check_command(
    adapters: Annotated[
        list[Path],
        typer.Argument(
            help="Adapters (PEFT directories, .safetensors or .gguf files), or directories to "
            "search for them (several allowed).",
            show_default=False,
        ),
    ],
    energy: PolicyEnergyOption = None,
    max_waste: MaxWasteOption = None,
    max_layer_waste: MaxLayerWasteOption = None,
    min_rank_used: MinRankUsedOption = None,
    coverage: PolicyCoverageOption = None,
    config: ConfigOption = None,
    no_config: NoConfigOption = False,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            "-f",
            help="Report format: table, json (the inspect reports plus findings), markdown "
            "(for $GITHUB_STEP_SUMMARY), github (workflow annotations) or junit (XML).",
        ),
    ] = OutputFormat.TABLE,
    output: OutputOption = None,
    junit_xml: JunitXmlOption = None,
    no_step_summary: NoStepSummaryOption = False,
    force: ForceOption = False,
    alpha: AlphaOption = None,
    device: DeviceOption = Device.AUTO,
    method: MethodOption = Method.AUTO,
    input_format: InputFormatOption = InputFormat.AUTO,
    include_checkpoints: IncludeCheckpointsOption = False,
) -> None:
    """Gate adapters on a policy: fail (exit 1) when one pays for rank it does not use.

    Policy: defaults < lora-audit.toml or tool.lora-audit in pyproject.toml < flags.
    The policy file is found upward from the working directory, or named with --config.

    One run can serve a whole CI job: --format github prints annotations, --junit-xml FILE
    also writes JUnit XML, and when $GITHUB_STEP_SUMMARY is set the Markdown summary is
    appended to it (--no-step-summary turns that off).

    Exit codes: 0 every adapter passes · 1 policy findings · 2 usage error · 3 an adapter or
    the policy file cannot be read or is invalid (the worst over all adapters).
    """

    def body() -> int:
        from lora_audit.cli.settings_file import resolve_policy
        from lora_audit.commands.check import run_check
        from lora_audit.engine.device import EngineOptions

        if config is not None and no_config:
            raise UsageError("--config and --no-config exclude each other")
        if config is not None:
            outputs().add_input(config)
        preflight(output)
        plan_extra_outputs(junit_xml=junit_xml)
        summary = step_summary_file(
            main_format=output_format.value, output=output, disabled=no_step_summary
        )
        flags = _validated_flags(
            energy=energy,
            coverage=coverage,
            max_waste=max_waste,
            max_layer_waste=max_layer_waste,
            min_rank_used=min_rank_used,
        )
        policy, policy_file = resolve_policy(
            flags=flags, config=config, search_from=None if no_config else Path.cwd()
        )
        if policy_file is not None:
            outputs().add_input(policy_file)
        report = run_check(
            adapters,
            policy=policy,
            policy_file=policy_file,
            engine=EngineOptions(device=device.value, method=method.value),  # type: ignore[arg-type]
            alpha=alpha,
            input_format=input_format.value,
            include_checkpoints=include_checkpoints,
            warn=warn,
            on_error=lambda exc: err(f"lora-audit: error: {exc}"),
            progress=_progress,
            notice=lambda note: err(f"lora-audit: {note}"),
            claim=outputs().add_adapter,
        )
        emit_report(report, output_format.value, output=output)
        write_extra_outputs(report, junit_xml=junit_xml, step_summary=summary)
        return exit_code_for(report)

    run_guarded(body, force=force, inputs=adapters)


def _validated_flags(**given: float | int | None) -> dict[str, float | int]:
    """The policy flags the user gave, by field name; an invalid value is a usage error."""
    from lora_audit.commands.options import policy_settings

    return policy_settings(**given)


def _progress(path: str, layers: int) -> AbstractContextManager[Progress | None]:
    return progress_bar(layers, description=path)
