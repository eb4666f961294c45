"""``lora-audit merge``: parse → run → render → exit."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lora_audit.choices import device_name, method_name
from lora_audit.cli._common import (
    emit_report,
    load_reported,
    outputs,
    preflight,
    progress_bar,
    run_guarded,
    warn,
)
from lora_audit.cli._options import (
    BudgetOption,
    CompressFormat,
    CompressFormatOption,
    ConfigOption,
    DebugOption,
    Device,
    DeviceOption,
    InputFormat,
    InputFormatOption,
    MaxRankOption,
    Method,
    MethodOption,
    MinRankOption,
    NoConfigOption,
    QuietOption,
    RankOption,
    RatioOption,
    RuleEnergyOption,
)
from lora_audit.cli._usage import examples
from lora_audit.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from lora_audit.decisions.compress_ranks import RankRule

_EXAMPLE = "lora-audit merge A B -o OUT --energy 0.99"
EXAMPLES = examples(
    "lora-audit merge style.safetensors character.safetensors -o merged.safetensors "
    "--weights 0.8,1.0 --energy 0.99",
    "lora-audit merge adapters/a adapters/b -o merged/ --rank 32",
    "lora-audit merge A B -o OUT --concat",
    "lora-audit merge A B --energy 0.99 --dry-run -f json",
)
#: Report formats ``merge`` offers: those of ``compress`` (a test keeps them registered).
MergeFormat = CompressFormat


def parse_weights(text: str | None) -> list[float] | None:
    """``"0.8,1,-0.5"`` → ``[0.8, 1.0, -0.5]``.

    Raises
    ------
    UsageError
        For an entry that is not a finite number.
    """
    if text is None:
        return None
    weights = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise UsageError(
                f"--weights: {item.strip()[:40]!r} is not a number", hint="e.g. --weights 0.8,1.0"
            ) from None
        if not math.isfinite(value):
            raise UsageError(f"--weights: {item.strip()[:40]!r} is not a finite number")
        weights.append(value)
    return weights


def merge_command(
    adapters: Annotated[
        list[Path],
        typer.Argument(
            help="Two or more adapters of one base model: PEFT directories (or files), or "
            "kohya/LyCORIS .safetensors files.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the merged adapter (a directory when the first input is a PEFT "
            "directory, else a .safetensors file). Never an input.",
            show_default=False,
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            help="One weight per adapter, comma-separated (default all 1); negative subtracts.",
            show_default=False,
        ),
    ] = None,
    rank: RankOption = None,
    energy: RuleEnergyOption = None,
    ratio: RatioOption = None,
    budget: BudgetOption = None,
    min_rank: MinRankOption = 1,
    max_rank: MaxRankOption = None,
    concat: Annotated[
        bool,
        typer.Option("--concat", help="Lossless: stack the factors (rank Σ rᵢ), no truncation."),
    ] = False,
    drop_extras: Annotated[
        bool,
        typer.Option(
            "--drop-extras",
            help="Leave out tensors that are not LoRA factors (modules_to_save heads); "
            "without it they must be identical in every input.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan; write nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing output (-o, --report): a file, or a directory holding "
            "only an adapter; never an input.",
        ),
    ] = False,
    output_format: CompressFormatOption = None,
    report_file: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write the REPORT to this file instead of stdout; -o names the merged adapter.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = Device.AUTO,
    method: MethodOption = Method.AUTO,
    input_format: InputFormatOption = InputFormat.AUTO,
    config: ConfigOption = None,
    no_config: NoConfigOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Merge adapters exactly: Σ wᵢ·ΔWᵢ at the rank it needs, with the optimal error.

    Give exactly one of --rank, --energy, --ratio, --budget, or --concat (lossless). Inputs
    are PEFT adapters of one base, or kohya/LyCORIS files of one base; -o is written in their
    format. --weights multiplies each input's ΔW (negative subtracts).
    """

    def body() -> int:
        from lora_audit.cli._settings import read_settings, report_format
        from lora_audit.commands.merge import MergeOptions, merge_adapters
        from lora_audit.engine.device import EngineOptions
        from lora_audit.formats.writer import output_kind, refuse_file_name

        read_settings(config=config, no_config=no_config)
        fmt = report_format(output_format, offered=CompressFormat, command="merge")

        options = MergeOptions(
            rule=_rule(
                concat=concat,
                rank=rank,
                energy=energy,
                ratio=ratio,
                budget=budget,
                min_rank=min_rank,
                max_rank=max_rank,
            ),
            output=output,
            weights=parse_weights(weights),
            dry_run=dry_run,
            force=force,
            drop_extras=drop_extras,
            engine=EngineOptions(device=device_name(device), method=method_name(method)),
        )
        if output is None and not dry_run:
            raise UsageError("--output is required", hint="or pass --dry-run to see the plan")
        if len(adapters) < 2:
            raise UsageError("merge needs at least two adapters", hint=_EXAMPLE)
        loaded = [load_reported(a, alpha=None, input_format=input_format.value) for a in adapters]
        if output is not None and not dry_run:
            kind = output_kind(loaded[0])
            outputs().plan(output, role="--output", kind=kind, adapter=True)
            refuse_file_name(loaded[0], output)
        preflight(report_file, role="--report")
        total = sum(1 for _ in {x.name for a in loaded for x in a.layers})
        with progress_bar(total, description="merge") as advance:
            report = merge_adapters(loaded, options=options, progress=advance, warn=warn)
        emit_report(report, fmt.value, output=report_file, role="--report")
        return int(ExitCode.OK)

    run_guarded(body, force=force, inputs=adapters)


def _rule(
    *,
    concat: bool,
    rank: int | None,
    energy: float | None,
    ratio: float | None,
    budget: str | None,
    min_rank: int,
    max_rank: int | None,
) -> RankRule | None:
    """``None`` for ``--concat``; else compress's rule (exactly one of the four flags)."""
    from lora_audit.commands.options import rank_rule

    if not concat:
        return rank_rule(
            rank=rank,
            energy=energy,
            ratio=ratio,
            budget=budget,
            min_rank=min_rank,
            max_rank=max_rank,
            example=_EXAMPLE + " (or --concat)",
        )
    given = [
        flag
        for flag, value in (
            ("--rank", rank),
            ("--energy", energy),
            ("--ratio", ratio),
            ("--budget", budget),
            ("--max-rank", max_rank),
        )
        if value is not None
    ]
    if given or min_rank != 1:
        raise UsageError(
            f"--concat keeps every rank: it takes no {', '.join(given) or '--min-rank'}",
            hint="drop --concat to truncate, or the rank flags to stack losslessly",
        )
    return None
