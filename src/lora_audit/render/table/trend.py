"""``trend`` as tables: the checkpoints in step order, then each layer's series over them."""

from __future__ import annotations

import os
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lora_audit.render._text import drift_rule_text, series_ends, step_word, trend_verdict
from lora_audit.render.escape import escaped_report, for_terminal
from lora_audit.render.table._blocks import BlockHeaders, block_prefix, block_rows
from lora_audit.render.table._cells import num, series_spark, shape
from lora_audit.render.table._layout import (
    DECORATIVE,
    Column,
    Grid,
    Row,
    grid_table,
    title,
    to_text,
)
from lora_audit.report import TrendReport


def common_directory(paths: Sequence[str]) -> str:
    """The directory (ending in ``/``) that all the paths share, or ``""``."""
    if len(paths) < 2:
        return ""
    prefix = os.path.commonprefix(list(paths))  # noqa: RUF071 (character-wise is intended)
    return prefix[: prefix.rfind("/") + 1]


def runs_title(report: TrendReport, *, where: str) -> str:
    """``lora-audit trend · N checkpoints · steps A–B · DIR/``."""
    s, checkpoints = report.settings, report.checkpoints
    text = f"lora-audit trend · {len(checkpoints)} checkpoints"
    if checkpoints:
        plural = {"step": "steps", "epoch": "epochs"}.get(s.step_unit, step_word(s.step_unit))
        text += f" · {plural} {checkpoints[0].step}–{checkpoints[-1].step}"
    return text + (f" · {where}" if where else "")


def runs_grid(report: TrendReport, *, where: str) -> Grid:
    """One row per checkpoint, in step order."""
    cs = report.checkpoints
    tau = f"{report.settings.energy:g}"
    lead = [Column(header=step_word(report.settings.step_unit), cells=[str(c.step) for c in cs])]
    columns = [
        Column(header="layers", cells=[str(c.layer_count) for c in cs]),
        Column(header="r", cells=[str(c.rank) for c in cs]),
        Column(header="mean sr", cells=[f"{c.mean_stable_rank:.2f}" for c in cs]),
        Column(header="max sr", cells=[f"{c.max_stable_rank:.2f}" for c in cs], drop=1),
        Column(
            header=f"mean k@{tau}",
            short=f"k@{tau}",
            cells=[f"{c.mean_energy_rank:.2f}" for c in cs],
        ),
        Column(header="‖ΔW‖F", cells=[num(c.frobenius_norm) for c in cs], drop=2),
        Column(header="wasted", cells=[f"{c.wasted_fraction:.1%}" for c in cs]),
    ]
    rows = [Row(label=c.path.removeprefix(where) or c.path) for c in cs]
    return Grid(name="checkpoint", rows=rows, columns=columns, lead=lead)


def layers_grid(report: TrendReport, *, prefix: str) -> Grid:
    """One row per layer: sparkline and first → last of each series, and the drift mark."""
    layers = report.layers
    names = [layer.name for layer in layers]
    rows = [Row(label=label, block=block) for block, label in block_rows(names, prefix=prefix)]
    marks = [
        " ".join({"stable_rank": "sr", "energy_rank": "k"}[m] for m in x.drift) for x in layers
    ]
    columns = [
        Column(header="shape", cells=[shape(x.shape) for x in layers], drop=1),
        Column(header="r", cells=[str(x.rank) for x in layers]),
        Column(
            header="sr",
            cells=[Text(series_spark(x.stable_rank), style="cyan") for x in layers],
            justify="left",
            drop=DECORATIVE,
        ),
        Column(
            header="stable rank",
            short="sr",
            cells=[series_ends(x.stable_rank, ".2f") for x in layers],
        ),
        Column(
            header="k",
            cells=[Text(series_spark(x.energy_rank), style="cyan") for x in layers],
            justify="left",
            drop=DECORATIVE,
        ),
        Column(
            header=f"k@{report.settings.energy:g}",
            cells=[series_ends(x.energy_rank, "d") for x in layers],
        ),
        Column(
            header="‖ΔW‖F", cells=[series_ends(x.frobenius_norm, ".3g") for x in layers], drop=2
        ),
        Column(
            header="drift",
            cells=[Text(f"↑ {m}" if m else "", style="bold red") for m in marks],
            justify="left",
        ),
    ]
    return Grid(name="layer", rows=rows, columns=columns)


def drift_table(report: TrendReport) -> Table:
    """``↑ layer · rule · message`` per finding."""
    findings = Table.grid(padding=(0, 1))
    findings.add_column(no_wrap=True)
    findings.add_column(overflow="fold")
    for f in report.findings:
        body = Text.assemble(
            (f.layer or "(adapter)", "bold"),
            " · ",
            (f.rule, "red" if f.severity == "error" else "yellow"),
            " · ",
            f.message,
        )
        findings.add_row(Text("↑", style="red"), body)
    return findings


@escaped_report(for_terminal)
def render_trend(report: TrendReport, *, width: int = 100, color: bool = False) -> str:
    """Checkpoints in step order, then each layer's stable rank, energy rank and norm over them."""
    s = report.settings
    where = common_directory([c.path for c in report.checkpoints])
    prefix = block_prefix([layer.name for layer in report.layers])
    headers = BlockHeaders()
    layers_title = f"per layer, in {step_word(s.step_unit)} order"
    layers_title += f" · names start with {prefix}" if prefix else ""
    parts: list[RenderableType] = [
        title(runs_title(report, where=where), width=width),
        grid_table(runs_grid(report, where=where), width=width),
        title(layers_title, width=width),
        grid_table(layers_grid(report, prefix=prefix), width=width, headers=headers),
    ]
    if report.findings:
        parts += [Text("drift", style="bold"), drift_table(report), Text("")]
        parts.append(Text(f"fix: {report.findings[0].fix}", style="green"))
    parts.append(Text(drift_rule_text(report), style="dim"))
    parts.append(Text(trend_verdict(report), style="bold red" if report.findings else "bold green"))
    return headers.expand(to_text(Group(*parts), width=width, color=color), width=width)
