"""Pictures of finished reports: PNG or SVG bytes, drawn with matplotlib (an optional extra).

``pip install 'lora-rank-audit[plot]'`` installs matplotlib; without it, :func:`require_matplotlib`
raises a usage error that says so. Figures are drawn on matplotlib's ``Figure`` directly (no
``pyplot``, no GUI backend, nothing is ever shown in a window) at :data:`DPI` dots per inch,
with a fixed layout, so the pixel size is known in advance:

* ``inspect``: :data:`INSPECT_SIZE` (1200×500 px) — the singular spectra on a log scale (the
  energy rank at τ marked on each; the layers the summary names as wasting most in colour and
  in the legend, the rest thin and grey) beside a layer × module heatmap of the stable rank
  (viridis over the adapter's own range, log-scaled when it spans ×2); taller (0.22 in per
  heatmap row beyond 17 rows) for deep models.
* ``trend``: :data:`TREND_SIZE` (1200×450 px, taller by the legend when layers drift) —
  stable rank, energy rank and ``‖ΔW‖_F`` of every layer over the steps; each layer flagged
  for drift in its own colour and named in the legend, the rest grey, the adapter in black.
* ``compare``: :data:`COMPARE_SIZE` (1200×550 px, or 0.17 in per layer up to 16 in) — layers
  down the y axis (at most 60 labels), their relative difference and the two subspace
  overlaps.

Like every renderer, this module only draws what the report holds; it computes nothing.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_audit.errors import UsageError
from lora_audit.render._plot_inspect import INSPECT_SIZE, inspect_figure, inspect_size
from lora_audit.render._plot_runs import (
    COMPARE_SIZE,
    TREND_SIZE,
    compare_figure,
    compare_size,
    trend_figure,
)
from lora_audit.render._plot_style import DPI, RC

__all__ = [
    "COMPARE_SIZE",
    "DPI",
    "INSPECT_SIZE",
    "PLOT_FORMATS",
    "TREND_SIZE",
    "compare_size",
    "inspect_size",
    "layer_filter",
    "plot_format",
    "render_plot",
    "require_matplotlib",
]

#: Formats a plot file may have, by suffix.
PLOT_FORMATS = ("png", "svg")

_INSTALL_HINT = "pip install 'lora-rank-audit[plot]' (or pip install matplotlib)"
_RC = RC  # the rc settings every figure is drawn under


def require_matplotlib() -> None:
    """Raise a usage error with the install command when matplotlib is missing.

    Raises
    ------
    UsageError
        When ``import matplotlib`` fails.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed", hint=_INSTALL_HINT
        ) from None


def plot_format(path: Path) -> str:
    """``"png"`` or ``"svg"`` from the file's suffix.

    Raises
    ------
    UsageError
        For any other suffix.
    """
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise UsageError(
            f"--plot {path}: unknown picture format {path.suffix or '(no suffix)'!r}",
            hint="name a .png or .svg file",
        )
    return fmt


def layer_filter(pattern: str | None) -> re.Pattern[str] | None:
    """Compile ``--plot-layers``.

    Raises
    ------
    UsageError
        When the pattern is not a valid regular expression, or one that could backtrack
        for too long (:func:`~lora_audit.formats.patterns.regex_problem`).
    """
    if pattern is None:
        return None
    from lora_audit.regex_guard import regex_problem

    problem = regex_problem(pattern)
    if problem is not None:
        raise UsageError(
            f"--plot-layers {pattern[:60]!r} is refused: {problem} can make matching take "
            "exponential time",
            hint="e.g. --plot-layers 'layer\\.(0|5)\\..*query'",
        )
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UsageError(
            f"--plot-layers {pattern!r} is not a regular expression: {exc}",
            hint="e.g. --plot-layers 'layer\\.(0|5)\\..*query'",
        ) from None


def render_plot(
    report: Any,
    *,
    fmt: str = "png",
    layers: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> bytes:
    """Draw a finished report and return the image file's bytes.

    Parameters
    ----------
    report
        An :class:`InspectReport`, :class:`TrendReport` or :class:`CompareReport`.
    fmt : {"png", "svg"}
    layers
        ``inspect`` only: a regular expression (``re.search``) choosing the layers whose
        spectra are drawn; all layers when ``None``. The heatmap always shows every layer.
    warn
        Receives each distinct warning matplotlib raised while drawing, as one line (a
        degenerate axis, a layout that does not fit); dropped when ``None``. They never reach
        stderr as Python's multi-line warnings.

    Raises
    ------
    UsageError
        When matplotlib is missing, the format is unknown, or no layer matches ``layers``.
    """
    require_matplotlib()
    if fmt not in PLOT_FORMATS:
        raise UsageError(f"unknown picture format {fmt!r}", hint="use png or svg")
    from matplotlib import rc_context

    with rc_context(_RC), warnings.catch_warnings(record=True) as caught:  # type: ignore[arg-type]
        warnings.simplefilter("always")
        # a name in a script the fonts lack draws as boxes: expected, not worth a line
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        if report.kind == "inspect":
            fig = inspect_figure(report, layers=layer_filter(layers))
        elif report.kind == "trend":
            fig = trend_figure(report)
        elif report.kind == "compare":
            fig = compare_figure(report)
        else:
            raise UsageError(f"--plot is not available for {report.kind}")
        buffer = io.BytesIO()
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        fig.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
    if warn is not None:
        for line in dict.fromkeys(str(w.message).strip().split("\n", 1)[0] for w in caught):
            warn(f"--plot: matplotlib: {line}")
    return buffer.getvalue()


#: The figure builders, under the names the tests reach for.
_inspect_figure, _trend_figure, _compare_figure = inspect_figure, trend_figure, compare_figure
