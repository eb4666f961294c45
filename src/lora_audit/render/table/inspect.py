"""``inspect`` as a table: one row per layer, then the summary and the advice."""

from __future__ import annotations

import dataclasses
import json

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lora_audit.render._text import (
    RANK_NOTE,
    adapter_rank_text,
    assumed_scale_text,
    rank_cell,
    retrain_text,
    rule_text,
    scale_sources_text,
)
from lora_audit.render.escape import clipped, escaped_report, for_terminal
from lora_audit.render.table._blocks import BlockHeaders, block_prefix, block_rows
from lora_audit.render.table._cells import num, shape, sparkline
from lora_audit.render.table._layout import (
    DECORATIVE,
    Column,
    Grid,
    Row,
    grid_table,
    info_grid,
    title,
    to_text,
)
from lora_audit.render.table.inspect_base import base_parts
from lora_audit.report import InspectReport


def layer_title(report: InspectReport, *, prefix: str) -> str:
    """``PATH · N layers · scale S · names start with PREFIX``."""
    scales = {layer.scale for layer in report.layers}
    text = f"{report.adapter.path} · {len(report.layers)} layers"
    if len(scales) == 1:
        text += f" · scale {next(iter(scales)):.3g}"
        sources = {layer.scale_source for layer in report.layers}
        text += " (ASSUMED)" if sources == {"assumed"} else ""
    return text + (f" · names start with {prefix}" if prefix else "")


def layer_grid(report: InspectReport) -> tuple[Grid, str]:
    """The per-layer grid (the scale column only when layers differ in scale) and the prefix."""
    layers = report.layers
    names = [layer.name for layer in layers]
    prefix = block_prefix(names)
    mark = len({layer.scale_source for layer in layers}) > 1  # only when others are known
    rows = [
        Row(label=label, block=block, mark=" *" if mark and x.scale_source == "assumed" else "")
        for x, (block, label) in zip(layers, block_rows(names, prefix=prefix), strict=True)
    ]
    tau = f"{report.settings.energy:g}"
    columns = [
        Column(header="shape", cells=[shape(x.shape) for x in layers]),
        Column(header="r", cells=[rank_cell(x) for x in layers]),
    ]
    if len({layer.scale for layer in layers}) > 1:
        columns.append(Column(header="scale", cells=[f"{x.scale:.3g}" for x in layers]))
    columns += [
        Column(
            header="σ spectrum",
            cells=[Text(sparkline(x.singular_values), style="cyan") for x in layers],
            justify="left",
            drop=DECORATIVE,
        ),
        Column(header="σ₁", cells=[num(x.spectral_norm) for x in layers], drop=2),
        Column(header="‖ΔW‖F", cells=[num(x.frobenius_norm) for x in layers], drop=3),
        Column(header="sr", cells=[f"{x.stable_rank:.2f}" for x in layers]),
        Column(header="erank", cells=[f"{x.effective_rank:.2f}" for x in layers], drop=1),
        Column(
            header=f"k@{tau}",
            cells=[
                Text(str(x.energy_rank), style="yellow" if x.untrained else "bold") for x in layers
            ],
        ),
        Column(
            header="waste",
            cells=[
                Text(str(x.wasted_rank), style="bold red" if x.mostly_wasted else "")
                for x in layers
            ],
        ),
    ]
    return Grid(name="layer", rows=rows, columns=columns), prefix


def summary_table(report: InspectReport) -> Table:
    """Totals, the retraining plan and the biggest wasters."""
    s, a = report.summary, report.adapter
    info = info_grid()
    alpha = f", lora_alpha={a.lora_alpha:g}" if a.lora_alpha is not None else ""
    flags = "".join(
        f", {flag}" for flag, on in (("rsLoRA", a.use_rslora), ("DoRA", a.use_dora)) if on
    )
    if s.compress_command is not None:
        most = f"; most in {', '.join(s.top_wasters)}" if s.top_wasters else ""
        info.add_row(
            Text("gain", style="bold green"),
            f"{s.wasted_params:,} of {s.params:,} parameters ({s.wasted_fraction:.1%}) "
            f"removable at τ={report.settings.energy:g}{most}",
        )
        info.add_row(Text("compress", style="bold green"), s.compress_command)
    info.add_row(
        "adapter",
        f"{a.format}, {adapter_rank_text(s, config_rank=a.rank)}{alpha}{flags}, "
        f"{', '.join(a.dtypes)}",
    )
    if a.base_model:
        info.add_row("base model", a.base_model)
    if a.metadata:
        info.add_row("metadata", ", ".join(f"{k}={v}" for k, v in a.metadata.items()))
    if a.scale_sources:
        info.add_row("scale from", scale_sources_text(a.scale_sources))
    loud = assumed_scale_text(report)
    if loud is not None:
        marked = " (* in the table)" if len(a.scale_sources) > 1 else ""
        info.add_row(Text("ASSUMED", style="bold red"), Text(loud + marked, style="bold red"))
    untrained = s.advice_verdict == "untrained"
    if untrained:
        info.add_row(Text("untrained", style="bold yellow"), f"all {s.layer_count} layers (ΔW = 0)")
        info.add_row("parameters", f"{s.params:,}, none of them trained")
    else:
        stable = f"mean {s.mean_stable_rank:.2f}, max {s.max_stable_rank:.2f}"
        info.add_row("stable rank", stable)
        info.add_row(
            "parameters",
            f"{s.params:,} now → {s.params_after:,} truncated at τ={report.settings.energy:g} "
            f"({s.wasted_fraction:.1%} wasted)",
        )
    info.add_row("retrain", retrain_text(s))
    rule = rule_text(s)
    if rule is not None and not untrained:
        info.add_row("advice rule", rule)
    if s.rank_pattern:
        info.add_row("rank_pattern", json.dumps(s.rank_pattern))
    if s.alpha_pattern:
        info.add_row("alpha_pattern", json.dumps(s.alpha_pattern))
    if any(rank_cell(layer) != str(layer.rank) for layer in report.layers):
        info.add_row("r/dD", RANK_NOTE)
    if s.untrained_layers and not untrained:
        info.add_row("untrained", ", ".join(s.untrained_layers))
    if a.modules_to_save:
        info.add_row("not audited", "modules_to_save: " + ", ".join(a.modules_to_save))
    return info


def render_inspect(report: InspectReport, *, width: int = 100, color: bool = False) -> str:
    """The full human-readable inspect report; each metadata value shows at most
    :data:`~lora_audit.render.escape.SHOWN_CHARS` characters (the JSON report has them all)."""
    shown = {k: clipped(v) for k, v in report.adapter.metadata.items()}
    adapter = dataclasses.replace(report.adapter, metadata=shown)
    return _render_inspect(dataclasses.replace(report, adapter=adapter), width=width, color=color)


@escaped_report(for_terminal)
def _render_inspect(report: InspectReport, *, width: int = 100, color: bool = False) -> str:
    advice = Text("\n".join(f"→ {line}" for line in report.summary.advice), style="green")
    headers = BlockHeaders()
    grid, prefix = layer_grid(report)
    parts: list[RenderableType] = [
        title(layer_title(report, prefix=prefix), width=width),
        grid_table(grid, width=width, headers=headers),
        summary_table(report),
        *base_parts(report, headers=headers, width=width),
        Text(""),
        advice,
    ]
    return headers.expand(to_text(Group(*parts), width=width, color=color), width=width)
