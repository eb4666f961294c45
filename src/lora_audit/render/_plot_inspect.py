"""The ``inspect`` picture: singular spectra (the worst wasters named) and a stable-rank heatmap.

Which layers are named comes from the report: ``summary.top_wasters`` (the layers with the most
wasted parameters, worst first), or every chosen layer when ``--plot-layers`` picks at most
:data:`~lora_audit.render._plot_style.MAX_NAMED`. The heatmap's colours span the adapter's own
stable ranks (a log scale when they cover a factor of 2 or more), on a perceptual colormap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lora_audit.errors import UsageError
from lora_audit.render._plot_data import heat_grid, sample
from lora_audit.render._plot_style import (
    BACKGROUND,
    HIGHLIGHT,
    MAX_NAMED,
    figure,
    label_map,
    luminance,
    plain_log,
    plain_log_colorbar,
)
from lora_audit.render.escape import for_plot
from lora_audit.report import InspectReport, LayerReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

#: Figure size in inches (width, height); taller for deep models (:func:`inspect_size`).
INSPECT_SIZE = (12.0, 5.0)
#: The heatmap's colormap: perceptually uniform, dark = low stable rank, bright = high.
HEAT_CMAP = "viridis"


def inspect_size(report: InspectReport) -> tuple[float, float]:
    """The inspect figure's size in inches: taller when the heatmap has many rows."""
    rows = len(heat_grid(report.layers)[0])
    width, height = INSPECT_SIZE
    return width, max(height, 1.26 + 0.22 * rows)


def inspect_figure(report: InspectReport, *, layers: re.Pattern[str] | None) -> Figure:
    """Spectra of the chosen layers (all when ``layers`` is ``None``) beside the heatmap."""
    fig = figure(inspect_size(report))
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
    named = named_layers(report, chosen)
    drawn = sample(chosen, keep=lambda layer: layer.name in named)
    _spectra(spectra_ax, report, drawn, named=named, picked=len(chosen) <= MAX_NAMED)
    _heatmap(fig, heat_ax, report)
    shown = f" · spectra of {len(drawn)} of them, evenly spaced" if len(drawn) < len(chosen) else ""
    title = f"{for_plot(report.adapter.path)} · {len(report.layers)} layers{shown}"
    fig.suptitle(title, fontsize=11)
    return fig


def named_layers(report: InspectReport, chosen: Sequence[LayerReport]) -> list[str]:
    """The layers whose spectra get a colour and a legend entry, in legend order."""
    if len(chosen) <= MAX_NAMED:
        return [layer.name for layer in chosen]
    present = {layer.name for layer in chosen}
    return [name for name in report.summary.top_wasters if name in present][:MAX_NAMED]


def _spectra(
    ax: Axes, report: InspectReport, drawn: Sequence[LayerReport], *, named: list[str], picked: bool
) -> None:
    labels = label_map([x.name for x in report.layers])
    colours = {name: HIGHLIGHT[i % len(HIGHLIGHT)] for i, name in enumerate(named)}
    for layer in drawn:  # the rest first, thin and grey, under the named ones
        if layer.name not in colours:
            _spectrum(ax, layer, style=BACKGROUND, marker=2.5, label=None)
    for name in named:
        layer = next(x for x in drawn if x.name == name)
        label = f"{labels[name]} · k={layer.energy_rank} of r={layer.rank}"
        style = {"color": colours[name], "linewidth": 1.8, "alpha": 0.95}
        _spectrum(ax, layer, style=style, marker=5.0, label=label)
    plain_log(ax)
    ax.set_xlabel("index i")
    ax.set_ylabel("σᵢ of ΔW")
    tau = f"{report.settings.energy:g}"
    ax.set_title(f"singular values (log scale); ● = energy rank k at τ={tau}")
    from matplotlib.lines import Line2D

    handles, texts = ax.get_legend_handles_labels()
    others = len(drawn) - len(named)
    if others:  # one grey legend entry stands for every layer not named
        note = "other layers" if named else "layers"
        if not named and not picked:
            wasted = report.summary.top_wasters
            note += ": none of those wasting most is chosen" if wasted else ": none wastes rank"
        handles.append(Line2D([], [], **BACKGROUND))
        texts.append(f"{others} {note}")
    worst = len(report.summary.top_wasters)
    title = "most wasted rank" + (
        f" (worst {worst})" if len(named) == worst else f": {len(named)} of the worst {worst}"
    )
    title = "chosen layers" if picked else title
    legend = ax.legend(
        handles, texts, fontsize=7, title=title if named else None, title_fontsize=7.5, loc="best"
    )
    legend.get_frame().set_alpha(0.85)
    ax.grid(True, which="major", alpha=0.3)


def _spectrum(
    ax: Axes, layer: LayerReport, *, style: dict[str, Any], marker: float, label: str | None
) -> None:
    top = layer.spectral_norm
    points = [(j + 1, s) for j, s in enumerate(layer.singular_values) if s > top * 1e-15 and s > 0]
    if not points:  # an untrained layer: nothing to draw on a log scale, but still in the legend
        ax.plot([], [], **style, label=None if label is None else f"{label} (zero)")
        return
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, **style, label=label, zorder=3 if label else 1)
    k = layer.energy_rank
    if 0 < k <= len(layer.singular_values) and layer.singular_values[k - 1] > 0:
        ax.plot(
            [k], [layer.singular_values[k - 1]], "o", color=style["color"], alpha=style["alpha"],
            markeredgecolor="black" if label else "none", markeredgewidth=0.6,
            markersize=marker, zorder=4 if label else 1,
        )  # fmt: skip


def heat_range(values: Sequence[Sequence[float]]) -> tuple[float, float]:
    """The lowest and highest cell (widened by ×1.1 both ways when all cells are equal)."""
    finite = [v for row in values for v in row if not math.isnan(v) and v > 0]
    low, high = (min(finite), max(finite)) if finite else (1.0, 1.0)
    if high <= low * (1 + 1e-9):  # one value: centre it instead of a degenerate scale
        low, high = low / 1.1, high * 1.1
    return low, high


def heat_norm(values: Sequence[Sequence[float]]) -> tuple[Normalize, str]:
    """The colour scale of the heatmap: the cells' own range, log-scaled when it spans ×2 or more.

    A cell of stable rank 0 (an untrained layer) makes the scale linear from 0, so that it is
    drawn as the lowest colour rather than masked like a missing module.
    Returns the norm and the colour bar's scale note (``"log scale"`` or ``"linear"``).
    """
    from matplotlib.colors import LogNorm, Normalize

    low, high = heat_range(values)
    if any(v <= 0 for row in values for v in row if not math.isnan(v)):
        return Normalize(vmin=0.0, vmax=high), "linear"
    if high >= 2 * low:
        return LogNorm(vmin=low, vmax=high), "log scale"
    return Normalize(vmin=low, vmax=high), "linear"


def _heatmap(fig: Figure, ax: Axes, report: InspectReport) -> None:
    rows, cols, values, averaged = heat_grid(report.layers)
    from matplotlib import colormaps

    cmap = colormaps[HEAT_CMAP].with_extremes(bad="#eeeeee")
    norm, scale = heat_norm(values)
    image = ax.imshow(values, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(
        range(len(cols)), labels=[for_plot(c) for c in cols], rotation=35, ha="right", fontsize=7
    )
    ax.set_yticks(range(len(rows)), labels=[for_plot(r) for r in rows], fontsize=7)
    ax.spines[:].set_visible(False)
    if len(rows) * len(cols) <= 200:
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    dark = luminance(cmap(norm(v))) < 0.45
                    ax.text(
                        j, i, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if dark else "black",
                    )  # fmt: skip
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label(f"stable rank ‖ΔW‖F² / ‖ΔW‖₂² ({scale})")
    if scale == "log scale":
        plain_log_colorbar(bar, *heat_range(values))
    ax.set_title(
        "stable rank by block and module" + (" (consecutive bins averaged)" if averaged else "")
    )
