"""Pictures a reader can decode (issue 15, item 18): named lines, a colour scale, short ticks.

Asserted on the matplotlib figure objects: the spectra legend names the layers the summary says
waste most (the rest grey), the trend legend names the drifting layers, the heatmap of a
224-layer adapter uses the colormap's whole range (and is not mostly dark), the compare tick
labels are few and short, and no axis shows raw mathtext.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from factories import write_deep_peft

from lora_audit.render import _plot_inspect, _plot_runs, plot
from lora_audit.render import _plot_style as style

SAMPLES = Path(__file__).resolve().parents[2] / "sample_adapters"


def _inspect(path: Path) -> Any:
    from lora_audit.commands.inspect import AuditOptions, inspect_adapter
    from lora_audit.formats import load_adapter

    return inspect_adapter(load_adapter(path), options=AuditOptions())


def _drawn(fig: Any) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()  # tick labels exist only once drawn
    return fig


def _figure(report: Any, **kwargs: Any) -> Any:
    from matplotlib import rc_context

    builder = {"inspect": plot._inspect_figure, "trend": plot._trend_figure}.get(
        report.kind, plot._compare_figure
    )
    with rc_context(plot._RC):  # type: ignore[arg-type]
        return _drawn(builder(report, **kwargs))


@pytest.fixture(scope="module")
def r16() -> Any:
    return _inspect(SAMPLES / "minilm-r16")


@pytest.fixture(scope="module")
def noisy224(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """224 layers whose stable ranks all lie high (5.7 to 14.8 of r=16)."""
    return _inspect(write_deep_peft(tmp_path_factory.mktemp("deep"), steepness=(0.02, 0.3)))


def _texts(legend: Any) -> list[str]:
    return [text.get_text() for text in legend.get_texts()]


# --- inspect: spectra ---------------------------------------------------------------------------
def test_spectra_legend_names_the_worst_wasters_and_greys_the_rest(r16: Any) -> None:
    fig = _figure(r16, layers=None)
    spectra_ax = fig.axes[0]
    wasters = r16.summary.top_wasters
    assert len(wasters) == 5
    *labels, rest = _texts(spectra_ax.get_legend())
    assert len(labels) == len(wasters)
    assert rest == f"{len(r16.layers) - len(wasters)} other layers"
    short = style.label_map([x.name for x in r16.layers])
    for name, label in zip(wasters, labels, strict=True):  # worst first, as the summary says
        layer = next(x for x in r16.layers if x.name == name)
        assert label == f"{short[name]} · k={layer.energy_rank} of r={layer.rank}"
    assert spectra_ax.get_legend().get_title().get_text() == "most wasted rank (worst 5)"
    grey = [line for line in spectra_ax.lines if line.get_color() == style.BACKGROUND["color"]]
    coloured = {line.get_color() for line in spectra_ax.lines} - {style.BACKGROUND["color"]}
    others = len(r16.layers) - len(wasters)
    assert len(grey) >= others and len(coloured) == len(wasters)  # one colour per named layer
    assert all(line.get_linewidth() < 1 for line in grey if line.get_linestyle() != "None")


def test_a_few_chosen_layers_are_all_named(r16: Any) -> None:
    import re

    fig = _figure(r16, layers=re.compile(r"layer\.5\."))
    labels = _texts(fig.axes[0].get_legend())
    chosen = [x.name for x in r16.layers if "layer.5." in x.name]
    assert len(labels) == len(chosen) == 6
    assert all(any(name.split("encoder.")[-1] in label for label in labels) for name in chosen)


def test_a_pattern_keeping_some_wasters_names_those_and_says_so(r16: Any) -> None:
    import re

    fig = _figure(r16, layers=re.compile(r"layer\.(0|5)\."))  # 12 layers, 3 of the worst 5
    legend = fig.axes[0].get_legend()
    *labels, rest = _texts(legend)
    kept = [name for name in r16.summary.top_wasters if re.search(r"layer\.(0|5)\.", name)]
    assert len(labels) == len(kept) == 3 and rest == "9 other layers"
    assert legend.get_title().get_text() == "most wasted rank: 3 of the worst 5"


def test_log_axes_are_labelled_with_plain_numbers_never_mathtext(r16: Any) -> None:
    fig = _figure(r16, layers=None)
    spectra_ax = fig.axes[0]
    ticks = [t.get_text() for t in spectra_ax.get_yticklabels() if t.get_text()]
    assert {"0.01", "0.1", "1"} <= set(ticks)
    labels = [(*ax.get_yticklabels(), *ax.get_xticklabels()) for ax in fig.axes]
    every = [t.get_text() for axis in labels for t in axis]
    assert not any("$" in text or "mathdefault" in text for text in every)


# --- inspect: heatmap ---------------------------------------------------------------------------
def test_heatmap_of_224_high_rank_layers_spans_the_colormap(noisy224: Any) -> None:
    import numpy as np

    assert len(noisy224.layers) == 224
    fig = _figure(noisy224, layers=None)
    heat_ax = fig.axes[1]
    image = heat_ax.images[0]
    assert image.get_cmap().name.startswith(_plot_inspect.HEAT_CMAP)
    norm = image.norm
    values = np.ma.masked_invalid(np.asarray(image.get_array(), dtype=float))
    assert norm.vmin == pytest.approx(values.min()) and norm.vmax == pytest.approx(values.max())
    assert norm.vmax > 2 * norm.vmin  # the range is the data's, not degenerate
    scaled = np.asarray(norm(values.compressed()))
    assert scaled.min() <= 0.01 and scaled.max() >= 0.99
    # deciles of the cells spread over the colormap, not bunched at one end
    assert np.percentile(scaled, 90) - np.percentile(scaled, 10) > 0.7  # 0.51 before the fix
    lum = [style.luminance(image.cmap(s)) for s in scaled]
    assert sum(v < 0.2 for v in lum) < 0.2 * len(lum), "cells near black"  # 34% before
    bar_label = fig.axes[-1].get_ylabel()
    assert "stable rank" in bar_label and "log scale" in bar_label
    bar_ticks = [t.get_text() for t in fig.axes[-1].get_yticklabels() if t.get_text()]
    assert len(bar_ticks) >= 3 and all(t.replace(".", "").isdigit() for t in bar_ticks)


def test_heat_norm_of_one_value_is_centred_not_degenerate() -> None:
    norm, scale = _plot_inspect.heat_norm([[1.33, 1.33], [1.33, float("nan")]])
    assert norm.vmin < 1.33 < norm.vmax and scale == "linear"
    assert float(norm(1.33)) == pytest.approx(0.5, abs=0.03)
    norm, scale = _plot_inspect.heat_norm([[0.0, 1.5], [6.0, float("nan")]])  # an untrained cell
    assert (norm.vmin, norm.vmax, scale) == (0.0, 6.0, "linear")
    norm, scale = _plot_inspect.heat_norm([[1.2, 1.5], [6.0, float("nan")]])
    assert (norm.vmin, norm.vmax, scale) == (1.2, 6.0, "log scale")


# --- trend --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_trend() -> Any:
    from lora_audit.commands.trend import TrendOptions, expand_run, trend_of
    from lora_audit.formats import load_adapter

    paths, _ = expand_run([SAMPLES / "minilm-run"])
    return trend_of([load_adapter(p) for p in paths], options=TrendOptions())


def test_trend_legend_names_every_drifting_layer(run_trend: Any) -> None:
    drifting = [layer for layer in run_trend.layers if layer.drift]
    assert drifting, "the sample run has drifting layers"
    fig = _figure(run_trend)
    (legend,) = fig.legends
    labels = _texts(legend)
    short = style.label_map([x.name for x in run_trend.layers])
    assert len(labels) == len(drifting)
    for layer, label in zip(drifting, labels, strict=True):
        assert label.startswith(short[layer.name] + " — ")
        assert all(m.replace("_", " ") in label for m in layer.drift)
    assert f"{len(drifting)} drifting" in fig._suptitle.get_text()


def test_trend_names_at_most_max_named_and_counts_the_rest(run_trend: Any) -> None:
    base = run_trend.layers[0]
    layers = tuple(
        dataclasses.replace(base, name=f"model.layers.{i}.q_proj", drift=("stable_rank",))
        for i in range(20)
    )
    fig = _figure(dataclasses.replace(run_trend, layers=layers))
    labels = _texts(fig.legends[0])
    assert len(labels) == style.MAX_NAMED + 1
    assert labels[-1].startswith(f"{20 - style.MAX_NAMED} more drifting")


# --- compare ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair() -> Any:
    from lora_audit.commands.compare import compare_adapters
    from lora_audit.formats import load_adapter

    return compare_adapters(
        load_adapter(SAMPLES / "minilm-r16"),
        load_adapter(SAMPLES / "minilm-r8-rslora-patterns"),
        top_k=4,
    )


def test_compare_names_every_layer_on_the_y_axis(pair: Any) -> None:
    fig = _figure(pair)
    diff_ax = fig.axes[0]
    ticks = [t.get_text() for t in diff_ax.get_yticklabels()]
    assert ticks == style.short_names([x.name for x in pair.layers])
    assert all(t.get_rotation() == 0 for t in diff_ax.get_yticklabels())
    assert max(map(len, ticks)) <= style.LABEL_CHARS
    assert fig.get_size_inches()[1] >= 0.17 * len(ticks)  # room for each label


def test_compare_of_many_long_names_caps_and_folds_the_tick_labels(pair: Any) -> None:
    long = "base_model.model.transformer.encoder.very_long_submodule_name_for_testing"
    layers = tuple(
        dataclasses.replace(pair.layers[i % len(pair.layers)], name=f"m{i % 3}.{long}.{i}.attn")
        for i in range(1000)
    )
    fig = _figure(dataclasses.replace(pair, layers=layers))
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert 10 <= len(ticks) <= style.MAX_TICKS
    assert max(map(len, ticks)) <= style.LABEL_CHARS and all("…" in t for t in ticks)
    assert fig.get_size_inches()[1] <= _plot_runs.COMPARE_MAX_HEIGHT
    assert "bins of" in fig.axes[0].get_ylabel()


def test_fold_keeps_start_and_end() -> None:
    assert style.fold("short") == "short"
    folded = style.fold("encoder.layer.11.attention.output.dense.extra.long.tail", 30)
    assert len(folded) == 30 and folded.startswith("encoder.lay") and folded.endswith("long.tail")


def test_a_trend_without_drift_has_no_drift_legend_and_the_plain_size(run_trend: Any) -> None:
    layers = tuple(dataclasses.replace(layer, drift=()) for layer in run_trend.layers)
    fig = _figure(dataclasses.replace(run_trend, layers=layers))
    assert fig.legends == [] and tuple(fig.get_size_inches()) == plot.TREND_SIZE
    assert "0 drifting" in fig._suptitle.get_text()
