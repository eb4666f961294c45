"""``lora-audit extract``: parse → run → render → exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lora_audit.choices import ExtractFormat, device_name, extract_format_name
from lora_audit.cli._common import emit_report, outputs, preflight, progress_bar, run_guarded, warn
from lora_audit.cli._options import (
    ColorChoice,
    ColorOption,
    CompressFormat,
    CompressFormatOption,
    ConfigOption,
    DebugOption,
    Device,
    DeviceOption,
    NoConfigOption,
    QuietOption,
    RankOption,
    RuleEnergyOption,
)
from lora_audit.cli._usage import examples
from lora_audit.errors import ExitCode

EXAMPLES = examples(
    "lora-audit extract ./base-model ./fine-tuned-model -o ./extracted --energy 0.9",
    "lora-audit extract ./base-model ./fine-tuned-model -o ./extracted --rank 16 -f json",
)


def extract_command(
    base: Annotated[
        Path,
        typer.Argument(
            help="The base model: a .safetensors file, a directory, a sharded index, or a "
            "Hugging Face cache directory.",
            show_default=False,
        ),
    ],
    tuned: Annotated[
        Path,
        typer.Argument(
            help="The fully fine-tuned model, read the same way.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            readable=False,
            help="The PEFT adapter directory to write (adapter_config.json and "
            "adapter_model.safetensors). Never an input. The report goes to stdout, or to "
            "--report FILE.",
            show_default=False,
        ),
    ],
    energy: RuleEnergyOption = None,
    rank: RankOption = None,
    to: Annotated[
        ExtractFormat,
        typer.Option("--to", help="Adapter format written.", case_sensitive=False),
    ] = ExtractFormat.PEFT,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing output (-o, --report): a directory holding only an "
            "adapter; never an input.",
        ),
    ] = False,
    output_format: CompressFormatOption = None,
    report_file: Annotated[
        Path | None,
        typer.Option(
            "--report",
            readable=False,
            help="Write the REPORT (rank and exact error per layer) to this file instead of "
            "stdout.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = Device.AUTO,
    color: ColorOption = ColorChoice.AUTO,
    config: ConfigOption = None,
    no_config: NoConfigOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """The optimal (Eckart–Young) LoRA of a full fine-tune, TUNED − BASE, written as PEFT.

    Give exactly one of --energy (each layer at its k@τ) and --rank. No clamping. Norms,
    embeddings and other changed non-LoRA modules go into modules_to_save, changed biases of
    LoRA layers into lora_B.bias; anything that cannot be carried is listed in the report.
    """

    def body() -> int:
        from lora_audit.cli._settings import read_settings, report_format
        from lora_audit.commands.extract import ExtractOptions, check_extract_options, extract
        from lora_audit.engine.device import EngineOptions
        from lora_audit.formats.full_model import open_pair

        read_settings(config=config, no_config=no_config)
        fmt = report_format(output_format, offered=CompressFormat, command="extract")
        options = ExtractOptions(
            energy=energy,
            rank=rank,
            to=extract_format_name(to),
            force=force,
            engine=EngineOptions(device=device_name(device)),
        )
        check_extract_options(options)
        outputs().add_base(tuned)
        outputs().plan(output, role="--output", kind="directory", adapter=True)
        preflight(report_file, role="--report")
        count = len(open_pair(base, tuned)[2].pairs)
        with progress_bar(count, description="extract") as advance:
            report = extract(
                base, tuned, output=output, options=options, progress=advance, warn=warn
            )
        emit_report(report, fmt.value, output=report_file, role="--report", color=color.value)
        return int(ExitCode.OK)

    run_guarded(body, force=force, inputs=[tuned], base=base)
