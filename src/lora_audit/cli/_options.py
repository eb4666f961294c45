"""Reusable ``Annotated`` option types, so every command spells an option the same way."""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lora_audit.choices import Device as Device
from lora_audit.choices import InputFormat as InputFormat
from lora_audit.choices import Method as Method
from lora_audit.cli import _state
from lora_audit.decisions.advice_rule import DEFAULT_ADVICE_RULE

# Settings a settings file may give (``cli/settings_file.py``): ``None`` when the flag is not
# given, so that defaults < file < flags. The defaults are those of ``decisions.check_rules``.
EnergyOption = Annotated[
    float | None,
    typer.Option(
        "--energy",
        "-e",
        help="τ: each layer's rank k keeps at least this fraction of ‖ΔW‖_F², in (0, 1]. "
        "Default 0.99, or energy in the settings file.",
        show_default=False,
    ),
]
CoverageOption = Annotated[
    float | None,
    typer.Option(
        "--coverage",
        help="Fraction of layers the advised retraining rank must cover, in (0, 1]; the rest "
        f"get a rank_pattern entry. Default: the advice rule's quantile "
        f"({DEFAULT_ADVICE_RULE.quantile:g}), or coverage in "
        "the settings file; another value marks the rule custom.",
        show_default=False,
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Write the report to this file instead of stdout.",
        readable=False,  # an output is written, not read (click checks R_OK by default)
    ),
]


class ColorChoice(StrEnum):
    """When a table is printed in colour."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


ColorOption = Annotated[
    ColorChoice,
    typer.Option(
        "--color",
        help="Colour in tables: auto (on a terminal, unless NO_COLOR is set or TERM=dumb; "
        "FORCE_COLOR forces it), always or never.",
    ),
]
ForceOption = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Replace existing output files (-o, --plot); an input is never replaced.",
    ),
]


def _finite_non_zero(value: float | None) -> float | None:
    """Refuse ``--alpha nan``, ``inf`` or 0 as a bad option (exit 2), not a bad file."""
    if value is not None and not (math.isfinite(value) and value != 0):
        raise typer.BadParameter(f"{value} is not a finite non-zero number")
    return value


AlphaOption = Annotated[
    float | None,
    typer.Option(
        "--alpha",
        callback=_finite_non_zero,
        help="lora_alpha to use when neither adapter_config.json nor the file header gives one.",
    ),
]


DeviceOption = Annotated[
    Device,
    typer.Option(
        "--device",
        help="auto (CUDA when available), cpu or cuda.",
    ),
]
MethodOption = Annotated[
    Method,
    typer.Option(
        "--method",
        help="Core factorisation: auto (Gram, QR where Gram is not accurate enough), qr, gram.",
    ),
]

MaxWasteOption = Annotated[
    float | None,
    typer.Option(
        "--max-waste",
        help="Fail when more than this fraction of the adapter's LoRA parameters lies beyond "
        "each layer's energy rank, Σ(r−k)(in+out)/Σr(in+out), in [0, 1]; 1 turns it off. "
        "Default 0.5.",
        show_default=False,
    ),
]
MaxLayerWasteOption = Annotated[
    float | None,
    typer.Option(
        "--max-layer-waste",
        help="Fail when a trained layer wastes more than this fraction (r−k)/r of its rank, "
        "in [0, 1]. Default 1 (off).",
        show_default=False,
    ),
]
MinRankUsedOption = Annotated[
    int | None,
    typer.Option(
        "--min-rank-used",
        help="Fail when a layer's energy rank is below this; 1 flags untrained layers "
        "(ΔW = 0), 0 turns it off. Default 1.",
        show_default=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Settings file to read (a lora-audit.toml, or a pyproject.toml with a "
        "[tool.lora-audit] table) instead of searching upward from the working directory.",
        show_default=False,
    ),
]
NoConfigOption = Annotated[
    bool,
    typer.Option("--no-config", help="Read no settings file: defaults and flags only."),
]


def _set_quiet(value: bool) -> bool:
    if value:
        _state.QUIET = True
    return value


def _set_debug(value: bool) -> bool:
    if value:
        _state.DEBUG = True
    return value


QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        callback=_set_quiet,
        is_eager=True,
        help="Print only errors: no report on stdout (files named with -o, --report or "
        "--plot are still written), no progress, no warnings. The exit code says the rest.",
    ),
]
DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug",
        callback=_set_debug,
        is_eager=True,
        help="Show a traceback with an error (the exit code stays the same).",
    ),
]


InputFormatOption = Annotated[
    InputFormat,
    typer.Option(
        "--input-format",
        help="auto (detect from the keys), peft, kohya (kohya/sd-scripts, LyCORIS, diffusers) "
        "or mlx (mlx-lm); GGUF is detected from the file.",
    ),
]


#: ``--format jsonl``: not a renderer of a finished report but lines written as adapters finish
#: (:mod:`lora_audit.cli._jsonl`), offered by ``inspect`` and ``check``.
JSONL = "jsonl"


class InspectFormat(StrEnum):
    """Formats ``inspect`` offers (a test keeps this equal to ``formats_for("inspect")``, plus
    ``jsonl``)."""

    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"
    JSONL = JSONL


class CheckFormat(StrEnum):
    """Formats ``check`` offers: every registered one (``formats_for("check")``) and
    ``jsonl``."""

    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"
    GITHUB = "github"
    JUNIT = "junit"
    JSONL = JSONL


class TrendFormat(StrEnum):
    """Formats ``trend`` offers (a test keeps this equal to ``formats_for("trend")``)."""

    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"
    GITHUB = "github"


class CompareFormat(StrEnum):
    """Formats ``compare`` offers (a test keeps this equal to ``formats_for("compare")``)."""

    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"
    GITHUB = "github"


class CompressFormat(StrEnum):
    """Formats ``compress`` offers (a test keeps this equal to ``formats_for("compress")``)."""

    TABLE = "table"
    JSON = "json"


# ``--format``: ``None`` when not given, so that the settings file's ``format`` can apply.
_FORMAT_HELP = "Report format. Default table, or format in the settings file."
InspectFormatOption = Annotated[
    InspectFormat | None,
    typer.Option("--format", "-f", help=_FORMAT_HELP, show_default=False),
]
_FORMAT_CI_HELP = (
    "Report format: table, json, markdown (for $GITHUB_STEP_SUMMARY) or github (workflow "
    "annotations). Default table, or format in the settings file."
)
TrendFormatOption = Annotated[
    TrendFormat | None,
    typer.Option("--format", "-f", help=_FORMAT_CI_HELP, show_default=False),
]
CompareFormatOption = Annotated[
    CompareFormat | None,
    typer.Option("--format", "-f", help=_FORMAT_CI_HELP, show_default=False),
]
CompressFormatOption = Annotated[
    CompressFormat | None,
    typer.Option(
        "--format",
        "-f",
        help="Format of the report (not of the adapter). Default table, or format in the "
        "settings file.",
        show_default=False,
    ),
]


PlotOption = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        readable=False,
        help="Also draw the report into this .png or .svg file (needs matplotlib: "
        "pip install 'lora-rank-audit[plot]').",
        show_default=False,
    ),
]
PlotLayersOption = Annotated[
    str | None,
    typer.Option(
        "--plot-layers",
        help="With --plot: draw the spectra of the layers whose name matches this regular "
        "expression (default: all).",
        show_default=False,
    ),
]
BaseOption = Annotated[
    Path | None,
    typer.Option(
        "--base",
        help="The base model's weights (a .safetensors file, a directory, or a sharded model "
        "with model.safetensors.index.json): also measure sr(W), sr(W+ΔW), ‖ΔW‖/‖W‖ and how "
        "the update aligns with W's top singular directions.",
        show_default=False,
    ),
]
BaseKOption = Annotated[
    int | None,
    typer.Option(
        "--base-k",
        help="With --base: compare top-K singular subspaces in every layer (default: each "
        "layer's energy rank at τ).",
        show_default=False,
    ),
]
BasePartialOption = Annotated[
    bool,
    typer.Option(
        "--base-partial",
        help="With --base: audit the layers that match a base weight and warn about the rest, "
        "instead of failing.",
    ),
]
FuseIntoOption = Annotated[
    str | None,
    typer.Option(
        "--fuse-into",
        help="With --base: how much of each layer's update survives fusing it into the base "
        "and quantizing, for each scheme named (comma-separated: q8_0, q4_0, nf4, mlx-4bit), "
        "with one line of advice.",
        show_default=False,
        metavar="SCHEMES",
    ),
]
IncludeCheckpointsOption = Annotated[
    bool,
    typer.Option(
        "--include-checkpoints",
        help="Also audit the checkpoint-* directories found below a directory (they are "
        "skipped by default; a checkpoint named directly is always audited).",
    ),
]

ResumeOption = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        help="With --format jsonl: skip the adapters that already have a line in FILE (an "
        "interrupted run's output; with -o FILE, the new lines are appended to it).",
        show_default=False,
        metavar="FILE",
    ),
]

RankOption = Annotated[int | None, typer.Option("--rank", help="Every layer to at most this rank.")]
RuleEnergyOption = Annotated[
    float | None,
    typer.Option(
        "--energy",
        "-e",
        help="Per layer, the smallest k keeping this fraction of ‖ΔW‖_F², in (0, 1].",
    ),
]
RatioOption = Annotated[
    float | None,
    typer.Option("--ratio", help="Keep the singular values σᵢ ≥ σ₁/RATIO (RATIO ≥ 1)."),
]
BudgetOption = Annotated[
    str | None,
    typer.Option(
        "--budget",
        help="Total LoRA parameters (e.g. 2M, 500k), allocated greedily where they remove "
        "the most error per parameter.",
        metavar="COUNT",
    ),
]
MinRankOption = Annotated[int, typer.Option("--min-rank", help="No layer below this rank.")]
MaxRankOption = Annotated[int | None, typer.Option("--max-rank", help="No layer above this rank.")]
