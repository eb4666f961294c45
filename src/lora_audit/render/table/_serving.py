"""The rows compress and merge end with for a PEFT output: its one scale and how PEFT, vLLM
and llama.cpp read it (every verdict and sentence comes finished in the report)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from lora_audit.report import Serving

_NAMES = {"peft": "PEFT", "vllm": "vLLM", "llama.cpp": "llama.cpp"}
_STYLES = {"exact": "green", "differs": "bold red", "refused": "yellow"}


def add_serving_rows(info: Table, serving: Serving | None) -> None:
    """One row for the scale and ranks, then one per server: verdict, why, what to pass."""
    if serving is None:
        return
    ranks = serving.ranks
    span = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"
    padded = " (zero-padded: --uniform-rank)" if serving.uniform_rank else ""
    rescaled = (
        f"; {serving.rescaled_layers} kept layer(s) rescaled to it (rounded to their dtype)"
        if serving.rescaled_layers
        else ""
    )
    info.add_row(
        "scale", f"one scale {serving.scale:.6g} for every layer, rank {span}{padded}{rescaled}"
    )
    for check in serving.checks:
        line = Text(check.verdict, style=_STYLES[check.verdict])
        line.append(f": {check.detail}")
        if check.fix:
            line.append(f"; pass {check.fix}")
        info.add_row(_NAMES[check.server], line)
