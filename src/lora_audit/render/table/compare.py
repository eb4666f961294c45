"""``compare`` as a table: per matched layer, norms, difference, cosine, subspace overlaps."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.table import Table

from lora_audit.render._text import compare_difference_text, compare_overlap_text, optional
from lora_audit.render.escape import escaped_report, for_terminal
from lora_audit.render.table._blocks import BlockHeaders, block_prefix, block_rows
from lora_audit.render.table._cells import num, shape
from lora_audit.render.table._layout import (
    Column,
    Grid,
    Row,
    grid_table,
    info_grid,
    title,
    to_text,
)
from lora_audit.report import CompareReport


def listed(names: Sequence[str], *, limit: int = 6) -> str:
    """Up to ``limit`` names, then how many more."""
    shown = ", ".join(names[:limit])
    more = len(names) - limit
    return f"{shown} … ({more} more in --format json)" if more > 0 else shown


def compare_grid(report: CompareReport) -> tuple[Grid, str]:
    """One row per compared layer, under its numbered block, and the name prefix left out."""
    layers = report.layers
    names = [layer.name for layer in layers]
    prefix = block_prefix(names)
    rows = [Row(label=label, block=block) for block, label in block_rows(names, prefix=prefix)]
    columns = [
        Column(header="shape", cells=[shape(x.shape) for x in layers], drop=3),
        Column(header="r A/B", cells=[f"{x.rank_a}/{x.rank_b}" for x in layers], drop=2),
        Column(header="‖ΔW_A‖F", short="‖A‖F", cells=[num(x.norm_a) for x in layers]),
        Column(header="‖ΔW_B‖F", short="‖B‖F", cells=[num(x.norm_b) for x in layers]),
        Column(header="rel Δ", cells=[optional(x.relative_difference, ".3f") for x in layers]),
        Column(header="cos", cells=[optional(x.cosine, ".3f") for x in layers]),
        Column(header="k", cells=[str(x.k) for x in layers], drop=1),
        Column(
            header="ov. out", short="out", cells=[optional(x.left_overlap, ".3f") for x in layers]
        ),
        Column(
            header="ov. in", short="in", cells=[optional(x.right_overlap, ".3f") for x in layers]
        ),
    ]
    return Grid(name="layer", rows=rows, columns=columns), prefix


def compare_summary(report: CompareReport) -> Table:
    """Both adapters, what matched, and the adapter-wide difference and overlaps."""
    s = report.summary
    info = info_grid()
    for label, a in (("A", report.adapter_a), ("B", report.adapter_b)):
        rank = f", r={a.rank}" if a.rank is not None else ""
        info.add_row(label, f"{a.path} ({a.format}{rank}, {a.layer_count} layers)")
    info.add_row(
        "layers",
        f"{s.matched} matched, {s.compared} compared"
        + (f", {len(report.mismatched)} differ in shape" if report.mismatched else ""),
    )
    if s.only_in_a:
        info.add_row("only in A", f"{len(s.only_in_a)}: {listed(s.only_in_a)}")
    if s.only_in_b:
        info.add_row("only in B", f"{len(s.only_in_b)}: {listed(s.only_in_b)}")
    for m in report.mismatched:
        info.add_row("shape differs", f"{m.name}: {shape(m.shape_a)} vs {shape(m.shape_b)}")
    info.add_row("difference", compare_difference_text(report))
    info.add_row("overlap", compare_overlap_text(report))
    if s.most_different:
        info.add_row("most different", ", ".join(s.most_different))
    return info


@escaped_report(for_terminal)
def render_compare(report: CompareReport, *, width: int = 100, color: bool = False) -> str:
    """Per matched layer: norms, relative difference, cosine and subspace overlaps."""
    grid, prefix = compare_grid(report)
    text = f"{report.adapter_a.path} vs {report.adapter_b.path} · top-{report.top_k} subspaces"
    text += f" · names start with {prefix}" if prefix else ""
    headers = BlockHeaders()
    parts = (
        title(text, width=width),
        grid_table(grid, width=width, headers=headers),
        compare_summary(report),
    )
    return headers.expand(to_text(Group(*parts), width=width, color=color), width=width)
