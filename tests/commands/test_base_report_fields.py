"""The base-aware metrics (linalg) and their report form (report) name the same numbers."""

from __future__ import annotations

from dataclasses import fields

from lora_audit.linalg.against_base import BaseMetrics
from lora_audit.report import BaseLayerReport

#: What the report adds about where ``W`` came from, beside the numbers.
PROVENANCE = {"key", "file", "transposed", "update"}
#: Filled by another computation (``--intruders``, :mod:`lora_audit.linalg.intruders`).
SEPARATE = {"intruders"}


def test_every_metric_reaches_the_report_and_nothing_else_is_invented() -> None:
    metrics = {f.name for f in fields(BaseMetrics)} - {"dora"}
    report = {f.name for f in fields(BaseLayerReport)}
    assert metrics <= report, f"metrics the report drops: {sorted(metrics - report)}"
    unfilled = report - metrics - SEPARATE
    assert unfilled <= PROVENANCE, f"report fields no metric fills: {unfilled}"
