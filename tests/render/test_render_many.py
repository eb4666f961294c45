"""Summary rows: untrusted paths cannot inject terminal escapes, Markdown or workflow commands."""

from __future__ import annotations

import json
from dataclasses import replace

from lora_audit.render import OutputFormat, render
from lora_audit.render.many import rows_github
from lora_audit.report import AdapterError, AdapterRow, InspectManyReport, Settings, ToolInfo

EVIL = "runs/\x1b[31mred\u202e|`*x*`\n::error::owned"


def _row(path: str, verdict: str = "retrain") -> AdapterRow:
    return AdapterRow(
        path=path,
        format="peft",
        layer_count=2,
        nominal_rank=16,
        recommended_rank=2,
        wasted_fraction=0.875,
        mean_stable_rank=1.04,
        max_stable_rank=1.05,
        findings=None,
        verdict=verdict,  # type: ignore[arg-type]
    )


def _report() -> InspectManyReport:
    error = AdapterError(path=EVIL, message=f"{EVIL}: no such file or directory")
    return InspectManyReport(
        tool=ToolInfo(name="lora-audit", version="0"),
        settings=Settings(energy=0.99, coverage=0.9, device="cpu", method="auto"),
        adapters=(),
        errors=(error,),
        summary=(_row(EVIL), _row("runs/ok", "keep")),
        status="error",
    )


def test_table_rows_are_escaped_and_numbers_whole_at_80_columns() -> None:
    text = render(_report(), OutputFormat.TABLE, width=80)
    assert "\x1b" not in text and "\u202e" not in text and "\n::error" not in text
    assert "\\x1b[31mred\\u202e" in text.replace("\n", "").replace(" ", "")
    assert "87.5%" in text and "1.04/1.05" in text and "r=2" in text
    assert "2 adapters: 1 keep r, 1 retrain" in text


def test_markdown_and_github_rows_are_escaped() -> None:
    text = render(_report(), OutputFormat.MARKDOWN)
    assert "\x1b" not in text and "\n::error" not in text
    assert "<code>" in text  # a path with a backtick or | cannot be a code span
    lines = rows_github(_report()).splitlines()
    assert len(lines) == 2 and all(line.startswith("::notice ") for line in lines)
    assert "%0A::error" in lines[0]  # the newline is %-escaped: no second command


def test_json_keeps_every_row() -> None:
    data = json.loads(render(_report(), OutputFormat.JSON))
    assert data["kind"] == "inspect-many"
    assert [r["path"] for r in data["summary"]] == [EVIL, "runs/ok"]
    assert replace(_report(), summary=()).to_dict()["summary"] == []


def test_junit_with_summary_rows_validates_against_jenkins_junit_10_xsd() -> None:
    from pathlib import Path

    import pytest
    from reports import lean_report, wasteful_report

    from lora_audit.commands.check import assemble
    from lora_audit.commands.many import error_row, inspect_row
    from lora_audit.decisions.check_rules import Policy

    xmlschema = pytest.importorskip("xmlschema")
    xsd = Path(__file__).parents[1] / "support" / "schemas" / "junit-10.xsd"
    broken = AdapterError(path="adapters/br<o>ken\x01", message="3 bytes")
    report = assemble(
        reports=[lean_report(), wasteful_report()],
        errors=[broken],
        policy=Policy(),
        policy_file=None,
    )
    found = report.findings_for
    read = [inspect_row(r, findings=len(found(r.adapter.path))) for r in report.adapters]
    rows = (*read, error_row(broken))
    xml = render(replace(report, summary=rows), OutputFormat.JUNIT)
    xmlschema.XMLSchema10(str(xsd)).validate(xml)
    assert xml.count('name="lora-audit.verdict"') == 3
    assert xml != render(report, OutputFormat.JUNIT)
