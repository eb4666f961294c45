"""Reusable ``Annotated`` option types, so every command spells an option the same way."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

EnergyOption = Annotated[
    float,
    typer.Option(
        "--energy",
        "-e",
        help="τ: each layer's rank k keeps at least this fraction of ‖ΔW‖_F², in (0, 1].",
    ),
]
CoverageOption = Annotated[
    float,
    typer.Option(
        "--coverage",
        help="Fraction of layers the advised retraining rank must cover; the rest get a "
        "rank_pattern entry.",
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write the report to this file instead of stdout."),
]
AlphaOption = Annotated[
    float | None,
    typer.Option(
        "--alpha",
        help="lora_alpha to use when neither adapter_config.json nor the file header gives one.",
    ),
]
class Device(StrEnum):
    """Where the spectra are computed."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Method(StrEnum):
    """Core factorisation of the spectral engine."""

    AUTO = "auto"
    QR = "qr"
    GRAM = "gram"


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
