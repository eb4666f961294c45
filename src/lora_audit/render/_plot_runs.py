"""The ``trend`` picture (drifting layers named) and ``compare`` (layers down the y axis).

The drifting layers are those whose ``drift`` the report filled (``LayerTrend.drift``): each gets
its own colour in every panel and a legend entry naming it and what drifts; the others are thin
and grey. ``compare`` lists layers down the y axis (folded names, at most
:data:`~lora_audit.render._plot_style.MAX_TICKS` labels) so each name is readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lora_audit.render._plot_data import binned, sample
from lora_audit.render._plot_style import (
    BACKGROUND,
    HIGHLIGHT,
    MAX_NAMED,
    figure,
    label_map,
    plain_log,
    short_names,
    tick_positions,
)
from lora_audit.render.escape import for_plot
from lora_audit.report import CompareReport, LayerTrend, TrendReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Figure sizes in inches (width, height); compare grows with its layers (:func:`compare_size`).
TREND_SIZE = (12.0, 4.5)
COMPARE_SIZE = (12.0, 5.5)
#: Height per compare row, and the tallest compare figure, in inches.
COMPARE_ROW, COMPARE_MAX_HEIGHT = 0.17, 16.0
_METRIC_NAMES = {"stable_rank": "stable rank", "energy_rank": "energy rank"}


# --- trend --------------------------------------------------------------------------------------
def drifting(report: TrendReport) -> list[LayerTrend]:
    """The layers the report flags for drift, in report order."""
    return [layer for layer in report.layers if layer.drift]


def trend_figure(report: TrendReport) -> Figure:
    """Stable rank, energy rank and ‖ΔW‖F of every layer over the steps; drifting layers named."""
    flagged = drifting(report)
    named = flagged[:MAX_NAMED]
    height = TREND_SIZE[1] + (0.2 * ((len(named) + 2) // 3) + 0.25 if named else 0.0)
    fig = figure((TREND_SIZE[0], height))
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
    colours = {layer.name: HIGHLIGHT[i % len(HIGHLIGHT)] for i, layer in enumerate(named)}
    labels = label_map([x.name for x in report.layers])
    for ax, (metric, title, total, total_label) in zip(axes, panels, strict=True):
        _series(ax, drawn, metric=metric, steps=steps, colours=colours)
        ax.plot(
            steps, [getattr(c, total) for c in report.checkpoints], color="black",
            linewidth=2.2, marker="o", markersize=4, label=total_label, zorder=4,
        )  # fmt: skip
        if len(steps) >= window and metric != "frobenius_norm":
            ax.axvspan(steps[-window], steps[-1], color="tab:red", alpha=0.06, linewidth=0)
        if metric == "frobenius_norm":
            plain_log(ax)
        if steps and min(steps) > 0 and max(steps) >= 8 * min(steps):
            ax.set_xscale("log")  # checkpoints are often saved at doubling steps
            ax.set_xticks(steps, labels=[str(step) for step in steps])
            ax.minorticks_off()
        ax.set_title(title)
        ax.set_xlabel(unit)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    _drift_legend(fig, named, flagged=len(flagged), colours=colours, labels=labels)
    shown = f" ({len(drawn)} drawn: drift first, the rest evenly spaced)"
    fig.suptitle(
        f"lora-audit trend · {len(report.layers)} layers"
        f"{shown if len(drawn) < len(report.layers) else ''} over {len(steps)} checkpoints · "
        f"{len(flagged)} drifting (shaded: the last {window}, where drift is judged)",
        fontsize=11,
    )
    return fig


def _series(
    ax: Axes,
    drawn: Sequence[LayerTrend],
    *,
    metric: str,
    steps: Sequence[int],
    colours: dict[str, str],
) -> None:
    """One panel's layer lines: grey, then drifting (red), then the named ones on top."""
    for layer in sorted(drawn, key=lambda x: x.name in colours):  # named ones on top
        series = getattr(layer, metric)
        points = [(s, v) for s, v in zip(steps, series, strict=True) if v is not None]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        if layer.name in colours:
            rising = metric in layer.drift
            ax.plot(
                xs, ys, color=colours[layer.name], linewidth=1.8 if rising else 1.0,
                linestyle="-" if rising else "--", marker="o" if rising else None,
                markersize=3.5, zorder=3,
            )  # fmt: skip
        elif layer.drift:  # drifting, beyond the named ones
            ax.plot(xs, ys, color="tab:red", linewidth=0.9, alpha=0.6, zorder=2)
        else:
            ax.plot(xs, ys, **BACKGROUND, zorder=1)


def _drift_legend(
    fig: Figure,
    named: list[LayerTrend],
    *,
    flagged: int,
    colours: dict[str, str],
    labels: dict[str, str],
) -> None:
    from matplotlib.lines import Line2D

    if not named:
        return
    handles = [
        Line2D([], [], color=colours[layer.name], linewidth=1.8, marker="o", markersize=3.5)
        for layer in named
    ]
    texts = [
        f"{labels[layer.name]} — {', '.join(_METRIC_NAMES.get(m, m) for m in layer.drift)} rising"
        for layer in named
    ]
    if flagged > len(named):
        handles.append(Line2D([], [], color="tab:red", linewidth=0.9, alpha=0.6))
        texts.append(f"{flagged - len(named)} more drifting layers (see the report)")
    legend = fig.legend(
        handles, texts, loc="outside lower center", ncols=min(3, len(texts)), fontsize=7.5,
        frameon=False, title="drifting layers (solid: the metric that drifts; dashed: the others)",
        title_fontsize=8,
    )  # fmt: skip
    legend.set_in_layout(True)


# --- compare ------------------------------------------------------------------------------------
def compare_size(report: CompareReport) -> tuple[float, float]:
    """The compare figure's size in inches: one :data:`COMPARE_ROW` per (binned) layer."""
    rows = len(binned([x.relative_difference for x in report.layers])[0])
    width, height = COMPARE_SIZE
    return width, min(COMPARE_MAX_HEIGHT, max(height, 1.6 + COMPARE_ROW * rows))


def compare_figure(report: CompareReport) -> Figure:
    """Per layer (rows, report order, top down): relative difference and the two overlaps."""
    fig = figure(compare_size(report))
    diff_ax, overlap_ax = fig.subplots(1, 2, sharey=True, width_ratios=(1, 1))
    layers = report.layers
    diffs, size = binned([x.relative_difference for x in layers])
    ys = list(range(len(diffs)))
    diff_ax.barh(ys, diffs, color="tab:purple", height=0.75)
    diff_ax.set_xlabel("‖ΔW_A − ΔW_B‖F / ‖ΔW_A‖F")
    diff_ax.set_title("relative difference")
    diff_ax.grid(True, axis="x", alpha=0.3)
    left, _ = binned([x.left_overlap for x in layers])
    right, _ = binned([x.right_overlap for x in layers])
    overlap_ax.plot(left, ys, "o-", markersize=3, linewidth=0.9, label="output side (left)")
    overlap_ax.plot(right, ys, "s--", markersize=3, linewidth=0.9, label="input side (right)")
    overlap_ax.set_xlim(-0.03, 1.03)
    overlap_ax.set_xlabel(f"overlap of top-{report.top_k} (mean cos² of the angles)")
    overlap_ax.set_title("subspace overlap: 1 = same directions, 0 = unrelated")
    overlap_ax.grid(True, alpha=0.3)
    overlap_ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncols=2,
                      frameon=False)  # fmt: skip
    _layer_axis(diff_ax, [x.name for x in layers], count=len(diffs), size=size)
    a, b = for_plot(report.adapter_a.path), for_plot(report.adapter_b.path)
    fig.suptitle(f"{a} (A) vs {b} (B) · {len(layers)} matched layers", fontsize=11)
    return fig


def _layer_axis(ax: Axes, names: list[str], *, count: int, size: int) -> None:
    """Layer names (or the first layer of each bin) down the y axis, the first at the top."""
    labels = short_names(names)
    ticks = tick_positions(count)
    ax.set_yticks(ticks, labels=[labels[i * size] for i in ticks], fontsize=7)
    ax.set_ylim(count - 0.5, -0.5)
    shown = "" if len(ticks) == count else f"; one in {ticks[1] - ticks[0]} labelled"
    binned_note = f"bins of {size} layers (means)" if size > 1 else "layer"
    ax.set_ylabel(f"{binned_note}, report order{shown}")
