"""``merge`` as a table: per layer Σr → k, which inputs, energy kept and error; then totals."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from lora_audit.render.escape import escaped_report, for_terminal
from lora_audit.render.table._blocks import BlockHeaders, block_prefix, block_rows
from lora_audit.render.table._cells import shape
from lora_audit.render.table._layout import (
    Column,
    Grid,
    Row,
    add_output_rows,
    grid_table,
    info_grid,
    rank_rule_text,
    title,
    to_text,
)
from lora_audit.render.table._serving import add_serving_rows
from lora_audit.report.merge import MergeReport


def merge_title(report: MergeReport, *, prefix: str) -> str:
    """``w₀·[0] + w₁·[1] → OUTPUT · rule · names start with PREFIX``."""
    s = report.settings
    if s.value is None:
        rule = "concat (lossless)"
    else:
        rule = rank_rule_text(mode=s.mode, value=s.value, min_rank=s.min_rank, max_rank=s.max_rank)
    inputs = " + ".join(f"{x.weight:g}·[{i}]" for i, x in enumerate(report.inputs))
    text = f"merge {inputs} → {report.output or '(dry run)'} · {rule}"
    return text + (f" · names start with {prefix}" if prefix else "")


def merge_grid(report: MergeReport) -> tuple[Grid, str]:
    """One row per merged layer, under its numbered block, and the name prefix left out."""
    layers = report.layers
    names = [layer.name for layer in layers]
    prefix = block_prefix(names)
    rows = [Row(label=label, block=block) for block, label in block_rows(names, prefix=prefix)]
    everyone = tuple(range(len(report.inputs)))
    columns = [
        Column(header="shape", cells=[shape(x.shape) for x in layers], drop=2),
        Column(
            header="inputs",
            cells=[
                "all" if x.inputs == everyone else ",".join(str(i) for i in x.inputs)
                for x in layers
            ],
        ),
        Column(header="Σr → k", cells=[f"{x.rank} → {x.new_rank}" for x in layers]),
        Column(
            header="energy kept",
            short="kept",
            cells=[f"{x.energy_kept:.4f}" for x in layers],
            drop=1,
        ),
        Column(
            header="rel. error", short="error", cells=[f"{x.relative_error:.4f}" for x in layers]
        ),
        Column(header="params", cells=[f"{x.params:,} → {x.params_after:,}" for x in layers]),
    ]
    return Grid(name="layer", rows=rows, columns=columns), prefix


def totals_table(report: MergeReport) -> Table:
    """The inputs with their weights, layers, parameters, error, file sizes and the output."""
    t = report.summary
    info = info_grid()
    for i, x in enumerate(report.inputs):
        info.add_row(f"[{i}]", f"{x.path} ({x.format}, {x.layer_count} layers) × {x.weight:g}")
    partial = f"; {t.partial_layers} in only some inputs" if t.partial_layers else ""
    info.add_row("layers", f"{t.layer_count} merged{partial}")
    info.add_row(
        "parameters",
        f"{t.params:,} in the inputs → {t.params_after:,} ({t.saved_fraction:.1%} fewer)",
    )
    info.add_row(
        "error",
        f"vs the exact weighted sum: ‖ΔW − ΔW_k‖F/‖ΔW‖F = {t.relative_error:.4f}; worst layer "
        f"{t.max_relative_error:.4f}; min energy kept {t.min_energy_kept:.4f}",
    )
    after = (
        "(dry run: nothing written)" if t.file_bytes_after is None else f"{t.file_bytes_after:,}"
    )
    info.add_row("file", f"{t.file_bytes:,} bytes in → {after} bytes out")
    if report.dropped_extras:
        info.add_row("dropped", ", ".join(report.dropped_extras))
    assumed = (
        f"scale assumed for {t.assumed_scale_layers} input layer(s) (nothing in the file gives it)"
    )
    add_serving_rows(info, report.serving)
    add_output_rows(
        info,
        assumed=assumed if t.assumed_scale_layers else None,
        output=None if report.dry_run else report.output,
        kind=report.output_format,
    )
    return info


@escaped_report(for_terminal)
def render_merge(report: MergeReport, *, width: int = 100, color: bool = False) -> str:
    """Per layer Σr → k, inputs, energy kept and error; then the inputs and totals."""
    headers = BlockHeaders()
    grid, prefix = merge_grid(report)
    parts = (
        title(merge_title(report, prefix=prefix), width=width),
        grid_table(grid, width=width, headers=headers),
        totals_table(report),
    )
    return headers.expand(to_text(Group(*parts), width=width, color=color), width=width)
