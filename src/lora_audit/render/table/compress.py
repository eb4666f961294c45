"""``compress`` as a table: per layer old r → new k, energy kept and error; then the totals."""

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
from lora_audit.report import CompressReport


def compress_title(report: CompressReport, *, prefix: str) -> str:
    """``PATH → OUTPUT · rule · names start with PREFIX``."""
    s = report.settings
    rule = rank_rule_text(mode=s.mode, value=s.value, min_rank=s.min_rank, max_rank=s.max_rank)
    text = f"{report.adapter.path} → {report.output or '(dry run)'} · {rule}"
    text += f" · fit {s.fit}" if s.fit else ""
    return text + (f" · names start with {prefix}" if prefix else "")


def compress_grid(report: CompressReport) -> tuple[Grid, str]:
    """One row per layer, under its numbered block, and the name prefix left out."""
    layers = report.layers
    names = [layer.name for layer in layers]
    prefix = block_prefix(names)
    rows = [Row(label=label, block=block) for block, label in block_rows(names, prefix=prefix)]
    columns = [
        Column(header="shape", cells=[shape(x.shape) for x in layers], drop=2),
        Column(
            header="r → k",
            cells=[
                f"{x.rank} → {x.new_rank}" if x.action == "truncated" else f"{x.rank} (kept)"
                for x in layers
            ],
        ),
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


def totals_table(report: CompressReport) -> Table:
    """Layers truncated, parameters, error and file size."""
    t = report.summary
    info = info_grid()
    info.add_row("layers", f"{t.truncated} of {t.layer_count} truncated")
    info.add_row("parameters", f"{t.params:,} → {t.params_after:,} ({t.saved_fraction:.1%} fewer)")
    info.add_row(
        "error",
        f"adapter ‖ΔW − ΔW_k‖F/‖ΔW‖F = {t.relative_error:.4f}; worst layer "
        f"{t.max_relative_error:.4f}; min energy kept {t.min_energy_kept:.4f}",
    )
    if report.settings.fit:
        info.add_row(
            "fit",
            f"{report.settings.fit}: keeps {t.energy_kept:.4f} of the adapter's ‖ΔW‖F² "
            "(per layer above)",
        )
    after = (
        "(dry run: nothing written)"
        if t.file_bytes_after is None
        else (f"{t.file_bytes_after:,} bytes")
    )
    info.add_row("file", f"{t.file_bytes:,} bytes → {after}")
    assumed = (
        f"scale assumed for {t.assumed_scale_layers} of {t.layer_count} layers (nothing in "
        "the input gives it)"
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
def render_compress(report: CompressReport, *, width: int = 100, color: bool = False) -> str:
    """Per layer old r → new k, energy kept and error; then totals and file sizes."""
    headers = BlockHeaders()
    grid, prefix = compress_grid(report)
    parts = (
        title(compress_title(report, prefix=prefix), width=width),
        grid_table(grid, width=width, headers=headers),
        totals_table(report),
    )
    return headers.expand(to_text(Group(*parts), width=width, color=color), width=width)
