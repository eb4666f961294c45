"""What a picture draws when a report has thousands of layers: samples and bin averages.

A figure stays bounded in size and drawing time whatever the adapter's depth: at most
:data:`MAX_LINES` lines (spectra, trend series), :data:`MAX_ROWS` × :data:`MAX_COLS`
heatmap cells (consecutive rows or columns averaged into bins beyond that) and
:data:`MAX_BARS` bars (consecutive layers averaged). Each function says what it left out,
so the figure can say it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lora_audit.render.table import block_prefix, split_block

T = TypeVar("T")

#: Most lines drawn in one panel (spectra of inspect, series of trend).
MAX_LINES = 300
#: Most heatmap rows and columns (beyond, consecutive ones are averaged into bins).
MAX_ROWS = 100
MAX_COLS = 60
#: Most bars / points per series of compare (beyond, consecutive layers are averaged).
MAX_BARS = 300


def sample(
    items: Sequence[T], limit: int = MAX_LINES, *, keep: Callable[[T], bool] | None = None
) -> list[T]:
    """At most ``limit`` items in order: every one ``keep`` marks (up to ``limit``), then
    others evenly spaced (the first and last included)."""
    if len(items) <= limit:
        return list(items)
    marked = [i for i, item in enumerate(items) if keep is not None and keep(item)][:limit]
    taken = set(marked)
    rest = [i for i in range(len(items)) if i not in taken]
    room = limit - len(marked)
    if room > 0 and rest:
        step = (len(rest) - 1) / max(room - 1, 1)
        picked = sorted({rest[round(j * step)] for j in range(room)})
    else:
        picked = []
    return [items[i] for i in sorted({*marked, *picked})]


def _bins(n: int, limit: int) -> list[range]:
    size = math.ceil(n / limit) if n > limit else 1
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def binned(values: Sequence[float | None], limit: int = MAX_BARS) -> tuple[list[float], int]:
    """Means of consecutive bins of ``values`` (``None`` = missing), and the bin size."""
    as_float = [math.nan if v is None else float(v) for v in values]
    bins = _bins(len(as_float), limit)
    return [_mean([as_float[i] for i in b]) for b in bins], (len(bins[0]) if bins else 1)


def _label(labels: Sequence[str], b: range) -> str:
    return labels[b[0]] if len(b) == 1 else f"{labels[b[0]]} … {labels[b[-1]]}"


def heat_grid(layers: Sequence[Any]) -> tuple[list[str], list[str], list[list[float]], bool]:
    """Heatmap of stable ranks: row labels (numbered blocks), column labels (modules),
    values (NaN where a block lacks a module), and whether bins were averaged."""
    prefix = block_prefix([layer.name for layer in layers])
    rows: dict[str, None] = {}
    cols: dict[str, None] = {}
    cells: dict[tuple[str, str], float] = {}
    for layer in layers:
        group, label = split_block(layer.name.removeprefix(prefix))
        row = group.rstrip("._") or "(other)"
        rows[row] = None
        cols[label] = None
        cells[(row, label)] = float(layer.stable_rank)
    row_names, col_names = list(rows), list(cols)
    row_bins, col_bins = _bins(len(row_names), MAX_ROWS), _bins(len(col_names), MAX_COLS)
    values = [
        [
            _mean([cells.get((row_names[i], col_names[j]), math.nan) for i in rb for j in cb])
            for cb in col_bins
        ]
        for rb in row_bins
    ]
    averaged = len(row_bins) < len(row_names) or len(col_bins) < len(col_names)
    return (
        [_label(row_names, b) for b in row_bins],
        [_label(col_names, b) for b in col_bins],
        values,
        averaged,
    )
