"""Several adapters in one report: each adapter as one adapter is shown, then one row each.

:func:`inspect_many` composes the ``inspect-many`` renderers from the one-adapter ones;
:func:`with_rows` appends the summary rows to a ``check`` renderer when the report has them
(more than one adapter), so that one adapter's output stays what it always was. Nothing is
computed: every verdict and figure comes from :class:`~lora_audit.report.AdapterRow`.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from lora_audit.render.escape import escaped_report, for_terminal, for_xml
from lora_audit.render.github import command
from lora_audit.render.markdown import code, prose, table
from lora_audit.report import AdapterRow, InspectManyReport, RowVerdict

Renderer = Callable[..., str]

#: How a verdict reads in a row.
VERDICT_TEXT: dict[RowVerdict, str] = {
    "keep": "keep r",
    "retrain": "retrain",
    "keep-structure": "keep structure",
    "untrained": "untrained",
    "pass": "pass",
    "fail": "fail",
    "error": "unreadable",
}
_STYLE = {
    "pass": "bold green",
    "fail": "bold red",
    "error": "bold yellow",
    "retrain": "yellow",
    "untrained": "bold yellow",
}
_ICONS = {"pass": "✅", "fail": "❌", "error": "⚠️"}


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _sr(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _int(value: int | None) -> str:
    return "" if value is None else str(value)


def _retrain(row: AdapterRow) -> str:
    if row.verdict in ("error", "untrained") or row.recommended_rank is None:
        return ""
    return "keep" if row.verdict == "keep-structure" else f"r={row.recommended_rank}"


def counts_text(rows: Sequence[AdapterRow]) -> str:
    """``13 adapters: 9 keep r, 2 retrain, 2 unreadable`` (verdicts in a fixed order)."""
    counted = Counter(row.verdict for row in rows)
    parts = ", ".join(f"{counted[v]} {text}" for v, text in VERDICT_TEXT.items() if counted[v])
    return f"{len(rows)} adapter{'s' if len(rows) != 1 else ''}: {parts}"


def _cells(row: AdapterRow, *, findings: bool, compact: bool = False) -> list[str]:
    """``check`` rows: waste, stable ranks, findings (its table has the rest already)."""
    stable = (
        ""
        if row.mean_stable_rank is None
        else f"{_sr(row.mean_stable_rank)}/{_sr(row.max_stable_rank)}"
    )
    waste = [_pct(row.wasted_fraction), stable]
    if findings:
        return [*waste, _int(row.findings)]
    shape = [] if compact else [_int(row.layer_count), _int(row.nominal_rank)]
    return [*shape, *waste, _retrain(row)]


def _headers(*, findings: bool, compact: bool = False) -> list[str]:
    """Column headers after adapter and verdict; ``compact`` (narrow terminals) leaves out
    the layer count and rank, which each adapter's own report shows."""
    waste = ["wasted", "sr mean/max"]
    if findings:
        return [*waste, "findings"]
    return [*([] if compact else ["layers", "r"]), *waste, "retrain"]


#: Below this width the inspect summary leaves out ``layers`` and ``r``.
COMPACT_WIDTH = 76


def common_directory(paths: Sequence[str]) -> str:
    """The longest shared leading directory of ``paths`` (``a/b/``), or ``""``."""
    if len(paths) < 2:
        return ""
    parts = [p.split("/")[:-1] for p in paths]
    shared: list[str] = []
    for names in zip(*parts, strict=False):
        if len(set(names)) != 1:
            break
        shared.append(names[0])
    return "/".join(shared) + "/" if shared else ""


@escaped_report(for_terminal)
def rows_table(report: Any, *, width: int = 100, color: bool = False) -> str:
    """The summary rows of a report as a table, and a line counting the verdicts."""
    from rich import box
    from rich.console import Console, Group
    from rich.table import Table
    from rich.text import Text

    rows: tuple[AdapterRow, ...] = report.summary
    findings = report.kind == "check"
    below = common_directory([row.path for row in rows])
    title = f"summary · {len(rows)} adapters" + (f" below {below}" if below else "")
    grid = Table(
        title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True
    )
    grid.add_column("adapter", overflow="fold", min_width=12)
    grid.add_column("verdict", no_wrap=True)
    compact = width < COMPACT_WIDTH
    for header in _headers(findings=findings, compact=compact):
        grid.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        verdict = Text(VERDICT_TEXT[row.verdict], style=_STYLE.get(row.verdict, ""))
        cells = _cells(row, findings=findings, compact=compact)
        grid.add_row(row.path[len(below) :], verdict, *cells)
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        no_color=not color,
        markup=False,
        highlight=False,
        emoji=False,
    )
    console.print(Group(grid, Text(counts_text(rows), style="bold")))
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def rows_markdown(report: Any, *, width: int = 100, color: bool = False) -> str:
    """The summary rows as a Markdown section."""
    del width, color
    rows: tuple[AdapterRow, ...] = report.summary
    findings = report.kind == "check"
    header = ["adapter", "verdict", *_headers(findings=findings)]
    body = [
        [
            code(for_terminal(row.path)),
            f"{_ICONS[row.verdict]} {VERDICT_TEXT[row.verdict]}"
            if row.verdict in _ICONS
            else VERDICT_TEXT[row.verdict],
            *_cells(row, findings=findings),
        ]
        for row in rows
    ]
    lines = ["", f"## Summary: {prose(counts_text(rows))}", ""]
    lines += table(header, body, right=len(header) - 2)
    return "\n".join(lines) + "\n"


def rows_github(report: Any, *, width: int = 100, color: bool = False) -> str:
    """One ``::notice`` per adapter (verdict, waste, stable rank)."""
    del width, color
    lines = []
    for row in report.summary:
        if row.verdict == "error":
            text = f"{row.path}: {VERDICT_TEXT[row.verdict]}"
        else:
            text = (
                f"{row.path}: {VERDICT_TEXT[row.verdict]}, wasted {_pct(row.wasted_fraction)}, "
                f"stable rank mean {_sr(row.mean_stable_rank)}, max {_sr(row.max_stable_rank)}"
            )
        lines.append(command("notice", text, title="lora-audit summary"))
    return "\n".join(lines) + "\n"


def with_rows(base: Renderer, rows: Renderer, *, separator: str = "") -> Renderer:
    """``base``'s output, then ``separator`` and ``rows``' when the report has summary rows."""

    def render(report: Any, *, width: int = 100, color: bool = False) -> str:
        text = base(report, width=width, color=color)
        if not report.summary:
            return text
        return text + separator + rows(report, width=width, color=color)

    render.__doc__ = f"{base.__doc__} With several adapters, then one row per adapter."
    return render


def with_junit_rows(base: Renderer) -> Renderer:
    """JUnit from ``base``, each adapter's suite given the properties of its summary row
    (``waste``, ``stable_rank.mean``, ``stable_rank.max``, ``verdict``) when there are rows."""

    def render(report: Any, *, width: int = 100, color: bool = False) -> str:
        text = base(report, width=width, color=color)
        if not report.summary:
            return text
        root = ET.fromstring(text.encode("utf-8"))
        by_name = {for_xml(row.path): row for row in report.summary}
        for suite in root.iter("testsuite"):
            row = by_name.get(suite.get("name", ""))
            if row is None:
                continue
            properties = suite.find("properties")
            if properties is None:
                properties = ET.Element("properties")
                suite.insert(0, properties)
            for name, value in _junit_properties(row):
                ET.SubElement(properties, "property", {"name": name, "value": value})
        ET.indent(root, space="  ")
        body = ET.tostring(root, encoding="unicode")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"

    render.__doc__ = base.__doc__
    return render


def _junit_properties(row: AdapterRow) -> list[tuple[str, str]]:
    values: list[tuple[str, str]] = [("verdict", row.verdict)]
    if row.wasted_fraction is not None:
        values.append(("waste", f"{row.wasted_fraction:.4g}"))
    if row.mean_stable_rank is not None and row.max_stable_rank is not None:
        values.append(("stable_rank.mean", f"{row.mean_stable_rank:.4g}"))
        values.append(("stable_rank.max", f"{row.max_stable_rank:.4g}"))
    return [(f"lora-audit.{name}", value) for name, value in values]


def terminal_error(message: str) -> str:
    """An unreadable adapter's line in a table."""
    return f"✗ {for_terminal(message)}"


def markdown_error(message: str) -> str:
    """An unreadable adapter's line in Markdown."""
    return f"- ⚠️ {prose(for_terminal(message))}"


def inspect_many(
    single: Renderer, rows: Renderer, *, error: Callable[[str], str] = terminal_error
) -> Renderer:
    """A renderer of :class:`InspectManyReport`: every adapter by ``single``, the unreadable
    ones (each line by ``error``), then ``rows``."""

    def render(report: InspectManyReport, *, width: int = 100, color: bool = False) -> str:
        parts = [single(adapter, width=width, color=color) for adapter in report.adapters]
        if report.errors:
            parts.append("".join(error(e.message) + "\n" for e in report.errors))
        return "\n".join([*parts, rows(report, width=width, color=color)])

    render.__doc__ = f"Several adapters: each as {single.__name__} shows it, then a summary."
    return render
