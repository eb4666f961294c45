"""Pictures of reports with thousands of layers stay bounded (issue 17, section 3).

The report of a real sample adapter is multiplied to 8,000 layers (inspect, trend) or 20,000
(compare); the figure must draw at most the documented number of lines, rows and bars, say
and say what it skipped.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from lora_audit.render import _plot_data as data
from lora_audit.render import plot

SAMPLES = Path(__file__).resolve().parents[2] / "sample_adapters"


def _many(report: Any, n: int) -> Any:
    base = report.layers
    layers = tuple(
        dataclasses.replace(base[i % len(base)], name=f"model.layers.{i // 4}.proj{i % 4}")
        for i in range(n)
    )
    return dataclasses.replace(report, layers=layers)


@pytest.fixture(scope="module")
def inspect_report() -> Any:
    from lora_audit.commands.inspect import AuditOptions, inspect_adapter
    from lora_audit.formats import load_adapter

    return inspect_adapter(load_adapter(SAMPLES / "minilm-r16"), options=AuditOptions())


def test_inspect_of_8000_layers_samples_spectra_and_bins_the_heatmap(inspect_report: Any) -> None:
    report = _many(inspect_report, 8000)
    from matplotlib import rc_context

    with rc_context(plot._RC):  # type: ignore[arg-type]
        fig = plot._inspect_figure(report, layers=None)
    spectra_ax, heat_ax = fig.axes[:2]
    assert len(spectra_ax.lines) <= 2 * data.MAX_LINES  # a line and an energy-rank marker each
    rows, cols, values, averaged = data.heat_grid(report.layers)
    assert averaged and len(rows) <= data.MAX_ROWS and len(cols) <= data.MAX_COLS
    assert all(not math.isnan(v) for row in values for v in row)  # every bin has its layers
    assert "300 of them" in fig._suptitle.get_text()  # says what was skipped
    assert "averaged" in heat_ax.get_title()
    assert plot.inspect_size(report)[1] <= 1.26 + 0.22 * data.MAX_ROWS


def test_sample_keeps_marked_items_first_and_spreads_the_rest() -> None:
    items = list(range(10_000))
    picked = data.sample(items, 100, keep=lambda i: i % 1000 == 7)
    assert len(picked) == 100 and picked == sorted(picked)
    assert {7, 1007, 9007} <= set(picked)
    assert picked[0] == 0 and picked[-1] == 9999
    assert data.sample(items[:50], 100) == items[:50]


def test_binned_means_cover_every_value() -> None:
    values: list[float | None] = [float(i) for i in range(20_000)]
    values[5] = None
    means, size = data.binned(values)
    assert len(means) <= data.MAX_BARS and size == 67
    assert means[0] == pytest.approx(sum(v for v in range(67) if v != 5) / 66)
