"""What every figure shares: size, fonts, label folding, plain log-axis labels, highlight colours.

matplotlib is imported inside the functions only (``--help`` stays instant).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lora_audit.render.escape import for_plot
from lora_audit.render.table import block_prefix

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colorbar import Colorbar
    from matplotlib.figure import Figure

#: Dots per inch of every figure (SVG sizes are in points: 72 per inch).
DPI = 100
#: Longest layer label drawn (longer ones keep their start and end around a "…").
LABEL_CHARS = 40
#: Most layers named in one legend (the worst wasters, the drifting layers).
MAX_NAMED = 8
#: Most tick labels on a layer axis (beyond, every n-th layer is labelled).
MAX_TICKS = 60
#: Distinct colours of the named layers (tab10 without its grey; the rest are drawn grey).
HIGHLIGHT = ("tab:red", "tab:blue", "tab:orange", "tab:green", "tab:purple",
             "tab:brown", "tab:pink", "tab:olive", "tab:cyan")  # fmt: skip
#: The colour and width of the layers that are not named.
BACKGROUND: dict[str, Any] = {"color": "0.72", "linewidth": 0.6, "alpha": 0.55}

RC = {
    "svg.hashsalt": "lora-audit",  # stable element ids: the same report gives the same SVG
    "svg.fonttype": "path",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "text.parse_math": False,  # names are labels, never mathtext ("$\\frac{" must not crash)
    "text.usetex": False,
}


def figure(size: tuple[float, float]) -> Figure:
    """A bare ``Figure`` (no pyplot, no GUI) of ``size`` inches at :data:`DPI`."""
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI, layout="constrained")


def fold(name: str, limit: int = LABEL_CHARS) -> str:
    """``name`` cut to ``limit`` characters: its start (2/5) and end (3/5) around a "…"."""
    if len(name) <= limit:
        return name
    head = (limit - 1) * 2 // 5
    return f"{name[:head]}…{name[len(name) - (limit - 1 - head) :]}"


def short_names(names: Sequence[str], *, limit: int = LABEL_CHARS) -> list[str]:
    """Labels for layer names: their common block prefix removed, escaped, folded."""
    prefix = block_prefix(names)
    return [fold(for_plot(name.removeprefix(prefix)), limit) for name in names]


def label_map(names: Sequence[str], *, limit: int = LABEL_CHARS) -> dict[str, str]:
    """:func:`short_names` by full name."""
    return dict(zip(names, short_names(names, limit=limit), strict=True))


def tick_positions(count: int, limit: int = MAX_TICKS) -> list[int]:
    """At most ``limit`` evenly spaced indices of ``range(count)``, the first included."""
    step = max(1, -(-count // limit))
    return list(range(0, count, step))


def plain_log(ax: Axes, axis: str = "y") -> None:
    """Put ``axis`` on a log scale labelled ``0.01``, ``0.1``, ``1``, ``10`` (never mathtext)."""
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    which = ax.yaxis if axis == "y" else ax.xaxis
    which.set_major_formatter(_plain_log_formatter())
    which.set_minor_formatter(_plain_log_formatter(minor=True))


def plain_log_colorbar(bar: Colorbar, low: float, high: float) -> None:
    """Label a log-scaled colour bar from ``low`` to ``high`` with plain numbers: matplotlib's
    log ticks over a decade or more, else about six round numbers across the whole bar."""
    from matplotlib.ticker import MaxNLocator, NullFormatter

    bar.ax.yaxis.set_major_formatter(_plain_log_formatter())
    bar.ax.yaxis.set_minor_formatter(_plain_log_formatter(minor=True))
    if high < 10 * low:
        ticks = MaxNLocator(nbins=6).tick_values(low, high)
        bar.set_ticks([t for t in ticks if low <= t <= high])
        bar.set_ticklabels([f"{t:g}" for t in bar.get_ticks()])
        bar.ax.yaxis.set_minor_formatter(NullFormatter())


def _plain_log_formatter(*, minor: bool = False) -> Any:
    from matplotlib.ticker import LogFormatter

    class PlainLog(LogFormatter):  # type: ignore[misc]
        """matplotlib's choice of labelled ticks, written ``0.3`` instead of ``3×10⁻¹``."""

        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:.3g}"

    # minor ticks are labelled only when fewer than ~1.5 decades are shown
    return PlainLog(labelOnlyBase=not minor, minor_thresholds=(1.5, 0.6))


def luminance(rgba: Sequence[float]) -> float:
    """Relative luminance (Rec. 709) of an RGB(A) colour in [0, 1]; white text below 0.45."""
    r, g, b = rgba[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b
