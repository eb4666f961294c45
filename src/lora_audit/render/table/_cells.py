"""Cell text shared by the tables: sparklines and number formats (formatting only)."""

from __future__ import annotations

from collections.abc import Sequence

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 12


def sparkline(values: Sequence[float], *, width: int = SPARK_WIDTH) -> str:
    """Bars for ``values / max(values)``; longer spectra are bucketed by their maximum."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [
            max(values[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)])
            for i in range(width)
        ]
    top = max(values)
    if top <= 0:
        return " " * len(values)
    return "".join(
        " " if v <= 0 else SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))]
        for v in values
    )


def series_spark(values: Sequence[float | int | None]) -> str:
    """Bars from the series' minimum to its maximum (flat when constant; blank when missing)."""
    known = [float(v) for v in values if v is not None]
    if not known:
        return " " * len(values)
    low, high = min(known), max(known)
    span = high - low
    cells = []
    for v in values:
        if v is None:
            cells.append(" ")
        elif span <= 0:
            cells.append(SPARK[len(SPARK) // 2])
        else:
            cells.append(
                SPARK[min(len(SPARK) - 1, int((float(v) - low) / span * (len(SPARK) - 1) + 0.5))]
            )
    return "".join(cells)


def num(x: float) -> str:
    """Three significant digits."""
    return f"{x:.3g}"


def shape(dims: Sequence[int]) -> str:
    """``out×in``."""
    return "×".join(str(d) for d in dims)
