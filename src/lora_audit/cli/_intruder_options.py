"""The ``inspect --base --intruders`` options (kept apart from :mod:`._options`, which is full)."""

from __future__ import annotations

from typing import Annotated

import typer

IntrudersOption = Annotated[
    bool,
    typer.Option(
        "--intruders",
        help="With --base: also count intruder dimensions (Shuttleworth et al., 2025, as "
        "PEFT's intruders.py): top singular vectors of W+ΔW whose best |cos| with every "
        "singular vector of W is below ε. Costs a full SVD of every base matrix (cached in "
        "~/.cache/lora-audit; $LORA_AUDIT_CACHE_DIR) and of every W+ΔW.",
    ),
]
IntruderTopOption = Annotated[
    int | None,
    typer.Option(
        "--intruder-top",
        help="With --intruders: examine the top N singular vectors of W+ΔW (default 10).",
        metavar="N",
        show_default=False,
    ),
]
IntruderEpsilonOption = Annotated[
    float | None,
    typer.Option(
        "--intruder-epsilon",
        help="With --intruders: a vector is an intruder when its best |cos| is below E, in "
        "(0, 1] (default 0.5).",
        metavar="E",
        show_default=False,
    ),
]
IntruderLayersOption = Annotated[
    str | None,
    typer.Option(
        "--intruder-layers",
        help="With --intruders: only the layers whose name matches this regular expression.",
        metavar="REGEX",
        show_default=False,
    ),
]
