"""``check`` as a table: one row per adapter, then the findings, the errors and the verdict."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lora_audit.render._text import assumed_scale_text, number, policy_values, verdict
from lora_audit.render.escape import escaped_report, for_terminal
from lora_audit.render.table._layout import (
    Column,
    Grid,
    Row,
    grid_table,
    info_grid,
    title,
    to_text,
)
from lora_audit.report import CheckReport

#: Short headers and optional columns at narrow widths.
_SHORT = {"wasted": "waste", "findin": "found"}
_DROP = {"layers": 2, "r": 1}
_STATUS_STYLE = {
    "pass": "bold green",
    "fail": "bold red",
    "error": "bold yellow",
    "unreadable": "bold yellow",
}


def adapter_grid(report: CheckReport) -> Grid:
    """One row per adapter (readable or not): status, size, waste, retrain rank, findings."""
    rows: list[Row] = []
    cells: list[list[str | Text]] = []
    summaries = {inspect.adapter.path: inspect.summary for inspect in report.adapters}
    for one in report.verdicts:
        rows.append(Row(label=one.path))
        status = Text(one.status, style=_STATUS_STYLE[one.status])
        s = summaries.get(one.path)
        if one.status == "unreadable" or s is None:
            cells.append([status, "", "", "", "", ""])
            continue
        cells.append(
            [
                status,
                str(s.layer_count),
                str(s.nominal_rank),
                f"{s.wasted_fraction:.1%}",
                "keep" if s.keep_structure else f"r={s.recommended_rank}",
                str(one.findings),
            ]
        )
    wasted = f"wasted@{report.policy.get('energy', 0):g}"
    headers = ("status", "layers", "r", wasted, "retrain", "findings")
    columns = [
        Column(
            header=h,
            short=_SHORT.get(h[:6]),
            cells=[c[i] for c in cells],
            justify="left" if i == 0 else "right",
            drop=_DROP.get(h, 0),
        )
        for i, h in enumerate(headers)
    ]
    return Grid(name="adapter", rows=rows, columns=columns)


def findings_table(report: CheckReport) -> Table:
    """``✗ where · rule · measured, limit`` then the message and the fix, per finding."""
    findings = Table.grid(padding=(0, 1))
    findings.add_column(no_wrap=True)
    findings.add_column(overflow="fold")
    for f in report.findings:
        where = f"{f.adapter} · {f.layer}" if f.layer else f.adapter
        body = Text.assemble(
            (where, "bold"),
            " · ",
            (f.rule, "red"),
            f" · measured {number(f.measured)}, limit {number(f.limit)}\n",
            f.message,
            "\n",
            ("fix: ", "green"),
            f.fix,
        )
        findings.add_row(Text("✗", style="red"), body)
    return findings


@escaped_report(for_terminal)
def render_check(report: CheckReport, *, width: int = 100, color: bool = False) -> str:
    """The check report: one row per adapter, then the findings, the errors and the verdict."""
    parts: list[RenderableType] = [
        title("lora-audit check", width=width),
        grid_table(adapter_grid(report), width=width),
    ]
    if report.findings:
        parts += [Text("findings", style="bold"), findings_table(report), Text("")]
    for error in report.errors:
        parts.append(Text(f"✗ {error.message}", style="yellow"))
    for inspect in report.adapters:
        loud = assumed_scale_text(inspect)
        if loud is not None:
            parts.append(Text(f"! {inspect.adapter.path}: {loud}", style="bold red"))
    info = info_grid()
    info.add_row("policy", policy_values(report))
    info.add_row("policy file", report.policy_file or "none (defaults and flags)")
    info.add_row("rules", ", ".join(report.rules) or "none")
    parts.append(info)
    parts.append(Text(verdict(report), style=_STATUS_STYLE.get(report.status, "")))
    return to_text(Group(*parts), width=width, color=color)
