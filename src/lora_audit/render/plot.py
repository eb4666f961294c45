"""Pictures of finished reports: PNG or SVG bytes, drawn with matplotlib (an optional extra).

``pip install 'lora-rank-audit[plot]'`` installs matplotlib; without it, :func:`require_matplotlib`
raises a usage error that says so. Figures are drawn on matplotlib's ``Figure`` directly (no
``pyplot``, no GUI backend, nothing is ever shown in a window) at :data:`DPI` dots per inch,
with a fixed layout, so the pixel size is known in advance:

* ``inspect``: :data:`INSPECT_SIZE` (1200×500 px) — the singular spectra on a log scale (the
  energy rank at τ marked on each) beside a layer × module heatmap of the stable rank; taller
  (0.22 in per heatmap row beyond 17 rows) for deep models.
* ``trend``: :data:`TREND_SIZE` (1200×450 px) — stable rank, energy rank and ``‖ΔW‖_F`` of
  every layer over the steps; the layers flagged for drift in red, the adapter in black.
* ``compare``: :data:`COMPARE_SIZE` (1200×550 px) — per layer, the relative difference and
  the two subspace overlaps.

Like every renderer, this module only draws what the report holds; it computes nothing.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_audit.errors import UsageError
from lora_audit.render._plot_data import binned, heat_grid, sample
from lora_audit.render.escape import for_plot
from lora_audit.render.table import block_prefix
from lora_audit.report import CompareReport, InspectReport, TrendReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Dots per inch of every figure (SVG sizes are in points: 72 per inch).
DPI = 100
#: Figure sizes in inches (width, height).
INSPECT_SIZE = (12.0, 5.0)
TREND_SIZE = (12.0, 4.5)
COMPARE_SIZE = (12.0, 5.5)
#: Formats a plot file may have, by suffix.
PLOT_FORMATS = ("png", "svg")

_INSTALL_HINT = "pip install 'lora-rank-audit[plot]' (or pip install matplotlib)"
_RC = {
    "svg.hashsalt": "lora-audit",  # stable element ids: the same report gives the same SVG
    "svg.fonttype": "path",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "text.parse_math": False,  # names are labels, never mathtext ("$\\frac{" must not crash)
    "text.usetex": False,
}


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


def render_plot(report: Any, *, fmt: str = "png", layers: str | None = None) -> bytes:
    """Draw a finished report and return the image file's bytes.

    Parameters
    ----------
    report
        An :class:`InspectReport`, :class:`TrendReport` or :class:`CompareReport`.
    fmt : {"png", "svg"}
    layers
        ``inspect`` only: a regular expression (``re.search``) choosing the layers whose
        spectra are drawn; all layers when ``None``. The heatmap always shows every layer.

    Raises
    ------
    UsageError
        When matplotlib is missing, the format is unknown, or no layer matches ``layers``.
    """
    require_matplotlib()
    if fmt not in PLOT_FORMATS:
        raise UsageError(f"unknown picture format {fmt!r}", hint="use png or svg")
    from matplotlib import rc_context

    with rc_context(_RC), warnings.catch_warnings():  # type: ignore[arg-type]
        # a name in a script the fonts lack draws as boxes; no multi-line warning on stderr
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        if report.kind == "inspect":
            fig = _inspect_figure(report, layers=layer_filter(layers))
        elif report.kind == "trend":
            fig = _trend_figure(report)
        elif report.kind == "compare":
            fig = _compare_figure(report)
        else:
            raise UsageError(f"--plot is not available for {report.kind}")
        buffer = io.BytesIO()
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        fig.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
    return buffer.getvalue()


def inspect_size(report: InspectReport) -> tuple[float, float]:
    """The inspect figure's size in inches: taller when the heatmap has many rows."""
    rows = len(heat_grid(report.layers)[0])
    width, height = INSPECT_SIZE
    return width, max(height, 1.26 + 0.22 * rows)


def _figure(size: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI, layout="constrained")


def _short_names(names: Sequence[str]) -> list[str]:
    prefix = block_prefix(names)
    return [for_plot(name.removeprefix(prefix)) for name in names]


# --- inspect ------------------------------------------------------------------------------------
def _inspect_figure(report: InspectReport, *, layers: re.Pattern[str] | None) -> Figure:
    fig = _figure(inspect_size(report))
    spectra_ax, heat_ax = fig.subplots(1, 2, width_ratios=(1.15, 1))
    chosen = list(report.layers)
    if layers is not None:
        from lora_audit.regex_guard import search_names

        hits = search_names(layers, [layer.name for layer in chosen], what="--plot-layers")
        chosen = [layer for layer, hit in zip(chosen, hits, strict=True) if hit]
    if not chosen:
        raise UsageError(
            f"--plot-layers {layers.pattern if layers else ''!r} matches no layer",
            hint="the layer names are those of the report (lora-audit inspect ADAPTER)",
        )
    drawn = sample(chosen)
    _spectra(spectra_ax, report, drawn)
    _heatmap(fig, heat_ax, report)
    shown = f" · spectra of {len(drawn)} of them, evenly spaced" if len(drawn) < len(chosen) else ""
    title = f"{for_plot(report.adapter.path)} · {len(report.layers)} layers{shown}"
    fig.suptitle(title, fontsize=11)
    return fig


def _spectra(ax: Axes, report: InspectReport, chosen: Sequence[Any]) -> None:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    names = _short_names([layer.name for layer in chosen])
    legend = len(chosen) <= 10
    n = len(chosen)
    for i, (layer, label) in enumerate(zip(chosen, names, strict=True)):
        top = layer.spectral_norm
        points = [
            (j + 1, s) for j, s in enumerate(layer.singular_values) if s > top * 1e-15 and s > 0
        ]
        if not points:
            continue
        color = cmap(0.9 * i / max(n - 1, 1))
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, color=color, linewidth=1.1, alpha=0.85, label=label if legend else None)
        k = layer.energy_rank
        if 0 < k <= len(layer.singular_values) and layer.singular_values[k - 1] > 0:
            ax.plot(
                [k], [layer.singular_values[k - 1]], "o", color=color,
                markeredgecolor="black", markeredgewidth=0.6, markersize=4.5,
            )  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel("σᵢ of ΔW")
    tau = f"{report.settings.energy:g}"
    ax.set_title(f"singular values (log scale); ● = energy rank k at τ={tau}")
    if legend:
        ax.legend(fontsize=7, frameon=False)
    else:
        ax.text(
            0.99, 0.98, f"{n} layers, colour by order: first (dark) → last (light)",
            transform=ax.transAxes, ha="right", va="top", fontsize=7,
        )  # fmt: skip
    ax.grid(True, which="major", alpha=0.3)


def _heatmap(fig: Figure, ax: Axes, report: InspectReport) -> None:
    rows, cols, values, averaged = heat_grid(report.layers)
    from matplotlib import colormaps

    cmap = colormaps["magma_r"].with_extremes(bad="#eeeeee")
    image = ax.imshow(values, cmap=cmap, aspect="auto", interpolation="nearest", vmin=1.0)
    ax.set_xticks(
        range(len(cols)), labels=[for_plot(c) for c in cols], rotation=35, ha="right", fontsize=7
    )
    ax.set_yticks(range(len(rows)), labels=[for_plot(r) for r in rows], fontsize=7)
    ax.spines[:].set_visible(False)
    if len(rows) * len(cols) <= 200:
        top = max((v for row in values for v in row if not math.isnan(v)), default=1.0)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(
                        j, i, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if v > 1 + 0.6 * (top - 1) else "black",
                    )  # fmt: skip
    fig.colorbar(image, ax=ax, label="stable rank ‖ΔW‖F² / ‖ΔW‖₂²", shrink=0.9)
    ax.set_title(
        "stable rank by block and module" + (" (consecutive bins averaged)" if averaged else "")
    )


# --- trend --------------------------------------------------------------------------------------
def _trend_figure(report: TrendReport) -> Figure:
    fig = _figure(TREND_SIZE)
    axes = fig.subplots(1, 3)
    steps = [c.step for c in report.checkpoints]
    unit = {"step": "step", "epoch": "epoch", "order": "checkpoint (given order)"}.get(
        report.settings.step_unit, "checkpoint number"
    )
    tau = f"{report.settings.energy:g}"
    panels = (
        ("stable_rank", "stable rank", "mean_stable_rank", "adapter mean"),
        ("energy_rank", f"energy rank k at τ={tau}", "mean_energy_rank", "adapter mean"),
        ("frobenius_norm", "‖ΔW‖F", "frobenius_norm", "adapter √Σ‖ΔW‖F²"),
    )
    window = report.settings.window
    drawn = sample(report.layers, keep=lambda layer: bool(layer.drift))
    for ax, (metric, title, total, total_label) in zip(axes, panels, strict=True):
        flagged_label = False
        for layer in drawn:
            series = getattr(layer, metric)
            points = [(s, v) for s, v in zip(steps, series, strict=True) if v is not None]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            if metric in layer.drift:
                ax.plot(
                    xs, ys, color="tab:red", linewidth=1.4, marker="o", markersize=3,
                    label=None if flagged_label else "drift",
                )  # fmt: skip
                flagged_label = True
            else:
                ax.plot(xs, ys, color="tab:blue", linewidth=0.8, alpha=0.3)
        ax.plot(
            steps, [getattr(c, total) for c in report.checkpoints], color="black",
            linewidth=2.2, marker="o", markersize=4, label=total_label,
        )  # fmt: skip
        if len(steps) >= window and metric != "frobenius_norm":
            ax.axvspan(steps[-window], steps[-1], color="tab:red", alpha=0.06, linewidth=0)
        if metric == "frobenius_norm":
            ax.set_yscale("log")
        if steps and min(steps) > 0 and max(steps) >= 8 * min(steps):
            ax.set_xscale("log")  # checkpoints are often saved at doubling steps
            ax.set_xticks(steps, labels=[str(step) for step in steps])
            ax.minorticks_off()
        ax.set_title(title)
        ax.set_xlabel(unit)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    shown = f" ({len(drawn)} drawn: drift first, the rest evenly spaced)"
    fig.suptitle(
        f"lora-audit trend · {len(report.layers)} layers"
        f"{shown if len(drawn) < len(report.layers) else ''} over {len(steps)} checkpoints "
        f"(shaded: the last {window}, where drift is judged)",
        fontsize=11,
    )
    return fig


# --- compare ------------------------------------------------------------------------------------
def _compare_figure(report: CompareReport) -> Figure:
    fig = _figure(COMPARE_SIZE)
    diff_ax, overlap_ax = fig.subplots(2, 1, sharex=True)
    layers = report.layers
    diffs, size = binned([x.relative_difference for x in layers])
    xs = list(range(len(diffs)))
    diff_ax.bar(xs, diffs, color="tab:purple", width=0.8)
    diff_ax.set_ylabel("‖ΔW_A − ΔW_B‖F / ‖ΔW_A‖F")
    a, b = for_plot(report.adapter_a.path), for_plot(report.adapter_b.path)
    diff_ax.set_title(f"{a} (A) vs {b} (B)")
    diff_ax.grid(True, axis="y", alpha=0.3)
    left, _ = binned([x.left_overlap for x in layers])
    right, _ = binned([x.right_overlap for x in layers])
    overlap_ax.plot(xs, left, "o-", markersize=3, linewidth=0.9, label="output side (left)")
    overlap_ax.plot(xs, right, "s--", markersize=3, linewidth=0.9, label="input side (right)")
    overlap_ax.set_ylim(-0.03, 1.03)
    overlap_ax.set_ylabel(f"overlap of top-{report.top_k}\n(mean cos² of angles)")
    overlap_ax.grid(True, alpha=0.3)
    overlap_ax.legend(fontsize=7, frameon=False, loc="lower left")
    names = _short_names([x.name for x in layers])
    if len(layers) <= 60:
        overlap_ax.set_xticks(xs, labels=names, rotation=90, fontsize=6)
    elif size > 1:
        overlap_ax.set_xlabel(f"layer bins of {size} (means, report order)")
    else:
        overlap_ax.set_xlabel("layer (report order)")
    return fig
