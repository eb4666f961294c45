"""GitHub Actions workflow commands for ``trend`` and ``compare`` (``--format github``).

``trend``: one annotation per drift finding — ``::error`` under ``--fail-on-drift`` (the run
fails), else ``::warning`` — on the last checkpoint's file, one ``::warning`` per reader
warning, and a last ``::notice`` with the verdict. ``compare`` has no verdict: a ``::notice``
with the difference and overlap of the two adapters, a ``::warning`` per layer that differs
in shape and per reader warning. Escaping as in :mod:`lora_audit.render.github`.
"""

from __future__ import annotations

from lora_audit.render._text import (
    compare_difference_text,
    compare_overlap_text,
    drift_rule_text,
    finding_text,
    trend_verdict,
)
from lora_audit.render.github import command
from lora_audit.report import CompareReport, TrendReport


def render_trend(report: TrendReport, *, width: int = 100, color: bool = False) -> str:
    """Annotations for a trend report; ``width`` and ``color`` are ignored."""
    del width, color
    files = {c.path: c.tensor_file for c in report.checkpoints}
    lines = [
        command(
            finding.severity,
            f"{finding_text(finding)} (fix: {finding.fix})",
            file=files.get(finding.adapter),
            title=f"lora-audit {finding.rule}",
        )
        for finding in report.findings
    ]
    lines += [command("warning", w, title="lora-audit trend") for w in report.warnings]
    summary = f"{trend_verdict(report)}; {drift_rule_text(report)}"
    lines.append(command("notice", summary, title="lora-audit trend"))
    return "\n".join(lines) + "\n"


def render_compare(report: CompareReport, *, width: int = 100, color: bool = False) -> str:
    """Annotations for a compare report; ``width`` and ``color`` are ignored."""
    del width, color
    a, b = report.adapter_a, report.adapter_b
    lines = [
        command(
            "warning",
            f"layer {m.name} is {m.shape_a[0]}×{m.shape_a[1]} in {a.path} but "
            f"{m.shape_b[0]}×{m.shape_b[1]} in {b.path}: not compared",
            file=b.tensor_file,
            title="lora-audit compare shape mismatch",
        )
        for m in report.mismatched
    ]
    lines += [command("warning", w, title="lora-audit compare") for w in report.warnings]
    s = report.summary
    only = f", {len(s.only_in_a)} only in A, {len(s.only_in_b)} only in B"
    summary = (
        f"{a.path} vs {b.path}: {s.matched} layers matched{only}; "
        f"{compare_difference_text(report)}; overlap {compare_overlap_text(report)}"
    )
    lines.append(command("notice", summary, title="lora-audit compare"))
    return "\n".join(lines) + "\n"
