"""``inspect --base`` as a table: stable ranks of ``W`` and ``W + ΔW``, size and alignment."""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from lora_audit.render._base_text import (
    BASE_HEADERS,
    INTRUDER_HEADER,
    base_cells,
    base_summary_rows,
    fuse_summary_rows,
    intruder_cell,
)
from lora_audit.render.table._blocks import BlockHeaders, block_prefix, block_rows
from lora_audit.render.table._layout import Column, Grid, Row, grid_table, info_grid, title
from lora_audit.report import InspectReport

#: Short headers and optional columns at narrow widths.
_SHORT = {"sr W+ΔW": "sr W+", "‖ΔW‖/‖W‖": "size", "σ₁ ratio": "σ₁ rel", "overlap": "ovl"}
_DROP = {"ampl.": 1, "σ₁ ratio": 2, "sr W": 3}


def base_parts(
    report: InspectReport, *, headers: BlockHeaders | None = None, width: int = 100
) -> list[RenderableType]:
    """The base-aware table and its summary (``inspect --base``); nothing without a base."""
    base = report.summary.base
    if base is None:
        return []
    layers = [layer for layer in report.layers if layer.base is not None]
    names = [layer.name for layer in layers]
    prefix = block_prefix(names)
    dora = any(layer.base.update == "dora" for layer in layers if layer.base is not None)
    text = f"against the base · {base.layers_matched} layers"
    text += " · ΔW = DoRA's effective update" if dora else ""
    text += f" · names start with {prefix}" if prefix else ""
    rows = [Row(label=label, block=block) for block, label in block_rows(names, prefix=prefix)]
    bases = [layer.base for layer in layers if layer.base is not None]
    cells = [base_cells(b) for b in bases]
    change = BASE_HEADERS.index("Δsr")
    columns = [
        Column(
            header=header,
            short=_SHORT.get(header),
            cells=[c[i] for c in cells],
            drop=_DROP.get(header, 0),
        )
        for i, header in enumerate(BASE_HEADERS)
    ]
    columns[change] = Column(
        header="Δsr",
        cells=[
            Text(c[change], style="bold" if abs(b.stable_rank_change) >= 1 else "")
            for c, b in zip(cells, bases, strict=True)
        ],
    )
    if base.intruders is not None:
        cells_i = [intruder_cell(b) for b in bases]
        columns.append(Column(header=INTRUDER_HEADER, short="intr.", cells=cells_i))
    grid = Grid(name="layer", rows=rows, columns=columns)
    return [
        Text(""),
        title(text, width=width),
        grid_table(grid, width=width, headers=headers),
        base_summary_table(report),
    ]


def base_summary_table(report: InspectReport) -> Table:
    """Adapter-wide base-aware numbers and which are exact or iterative."""
    base = report.summary.base
    assert base is not None
    info = info_grid()
    fuse = report.summary.fuse
    for label, text in [*base_summary_rows(base), *(fuse_summary_rows(fuse) if fuse else [])]:
        info.add_row(label, text)
    return info
