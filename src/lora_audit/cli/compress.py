"""``lora-audit compress``: parse → run → render → exit."""

from __future__ import annotations

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
    AlphaOption,
    BudgetOption,
    ColorChoice,
    ColorOption,
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
from lora_audit.commands.options import parse_budget as parse_budget  # this module's API
from lora_audit.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from lora_audit.adapter import Adapter

EXAMPLES = examples(
    "lora-audit compress ./my-adapter -o ./my-adapter-small -e 0.99",
    "lora-audit compress ./my-adapter --rank 8 --dry-run",
    "lora-audit compress lora.safetensors -o lora-2M.safetensors --budget 2M "
    "--report plan.json -f json",
    "lora-audit compress ./my-adapter -o ./my-adapter-vllm --fit vllm:max-lora-rank=16",
)


#: Shared by compress and merge.
UniformRankOption = Annotated[
    bool,
    typer.Option(
        "--uniform-rank",
        help="PEFT output: zero-pad every layer to one rank (exact), so that llama.cpp, which "
        "scales each layer by lora_alpha / its own rank, reads it as PEFT and vLLM do.",
    ),
]


def compress_command(
    adapter: Annotated[
        Path,
        typer.Argument(
            help="A PEFT adapter directory or a .safetensors file (PEFT, kohya, LyCORIS, "
            "diffusers).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            readable=False,
            help="Where to write the compressed ADAPTER: a directory for a PEFT adapter with "
            "its adapter_config.json (its README.md model card is carried over) or an mlx-lm "
            "adapter, else a .safetensors file. Never the input. The report goes to stdout, "
            "or to --report FILE.",
            show_default=False,
        ),
    ] = None,
    rank: RankOption = None,
    energy: RuleEnergyOption = None,
    ratio: RatioOption = None,
    budget: BudgetOption = None,
    min_rank: MinRankOption = 1,
    max_rank: MaxRankOption = None,
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
    allow_dora: Annotated[
        bool,
        typer.Option(
            "--allow-dora",
            help="Compress a DoRA adapter's B·A and keep its magnitude vectors unchanged.",
        ),
    ] = False,
    uniform_rank: UniformRankOption = False,
    fit: Annotated[
        str | None,
        typer.Option(
            "--fit",
            metavar="TARGET",
            help="Write the best adapter that TARGET loads and reads as PEFT does: vllm "
            "(every rank ≤ max-lora-rank, default 16), vllm:max-lora-rank=N, llama.cpp (one "
            "rank, zero-padded) or peft; the same TARGET as check --target. A rank rule given "
            "with it is clamped to the target; without one, as much as the target allows is "
            "kept.",
            show_default=False,
        ),
    ] = None,
    output_format: CompressFormatOption = None,
    report_file: Annotated[
        Path | None,
        typer.Option(
            "--report",
            readable=False,
            help="Write the REPORT (what was kept per layer) to this file instead of stdout; "
            "-o names the compressed adapter.",
            show_default=False,
        ),
    ] = None,
    alpha: AlphaOption = None,
    device: DeviceOption = Device.AUTO,
    method: MethodOption = Method.AUTO,
    input_format: InputFormatOption = InputFormat.AUTO,
    color: ColorOption = ColorChoice.AUTO,
    base: Annotated[
        Path | None,
        typer.Option(
            "--base",
            help="The base model's weights (a .safetensors file, a directory, or a sharded "
            "model): truncate a PEFT DoRA adapter exactly, keeping each output row's DoRA scale "
            "and recomputing the magnitudes.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    no_config: NoConfigOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Rewrite an adapter at a smaller rank with the optimal (Eckart–Young) error.

    Give exactly one of --rank, --energy, --ratio, --budget (or --fit TARGET, with at most
    one of them). -o is the compressed adapter;
    --report is the report file (default: the report goes to stdout). The settings file's
    energy does not choose --energy here; its format applies to the report.
    """

    def body() -> int:
        from lora_audit.cli._settings import read_settings, report_format
        from lora_audit.commands.compress import CompressOptions, compress_adapter
        from lora_audit.engine.device import EngineOptions

        read_settings(config=config, no_config=no_config)
        fmt = report_format(output_format, offered=CompressFormat, command="compress")

        from lora_audit.commands.compress_fit import given_rule
        from lora_audit.decisions.serving_targets import parse_target

        target = None if fit is None else parse_target(fit)
        rule = given_rule(
            target is not None,
            rank=rank,
            energy=energy,
            ratio=ratio,
            budget=budget,
            min_rank=min_rank,
            max_rank=max_rank,
        )
        if output is None and not dry_run:
            raise UsageError("--output is required", hint="or pass --dry-run to see the plan")
        loaded = load_reported(adapter, alpha=alpha, input_format=input_format.value)
        _claim_outputs(loaded, output=None if dry_run else output, report=report_file)
        if target is not None:
            from lora_audit.decisions.serving_fit import fit_rule

            rule = fit_rule(target, rule, [x.rank for x in loaded.layers])
        assert rule is not None  # rank_rule gave one, or fit_rule did
        options = CompressOptions(
            rule=rule,
            fit=target,
            output=output,
            dry_run=dry_run,
            force=force,
            allow_dora=allow_dora,
            engine=EngineOptions(device=device_name(device), method=method_name(method)),
            base=base,
            uniform_rank=uniform_rank,
        )
        with progress_bar(len(loaded.layers), description="compress") as advance:
            report = compress_adapter(loaded, options=options, progress=advance, warn=warn)
        emit_report(report, fmt.value, output=report_file, role="--report", color=color.value)
        return int(ExitCode.OK)

    run_guarded(body, force=force, inputs=[adapter], base=base)


def _claim_outputs(loaded: Adapter, *, output: Path | None, report: Path | None) -> None:
    """Check ``-o`` and ``--report`` before any work: neither an input nor each other."""
    from lora_audit.formats.writer import output_kind, refuse_file_name

    if output is not None:
        outputs().plan(output, role="--output", kind=output_kind(loaded), adapter=True)
        refuse_file_name(loaded, output)
    preflight(report, role="--report")
