"""Wording shared by the check renderers (formatting only; nothing is computed here)."""

from __future__ import annotations

from lora_audit.report import CheckReport, Finding

#: How a policy field is named in reports (the flag and policy-file key).
SETTING_NAMES = {
    "energy": "energy",
    "coverage": "coverage",
    "max_waste": "max-waste",
    "max_layer_waste": "max-layer-waste",
    "min_rank_used": "min-rank-used",
}


def finding_text(finding: Finding) -> str:
    """``adapter: message`` or ``adapter: layer NAME message``."""
    if finding.layer is None:
        return f"{finding.adapter}: {finding.message}"
    return f"{finding.adapter}: layer {finding.layer} {finding.message}"


def number(value: float | int) -> str:
    """A measured value or limit: integers as is, fractions with up to 4 significant digits."""
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def policy_values(report: CheckReport) -> str:
    """``energy=0.99, max-waste=0.5, …``."""
    return ", ".join(
        f"{SETTING_NAMES.get(key, key)}={number(value)}" for key, value in report.policy.items()
    )


def policy_text(report: CheckReport) -> str:
    """``energy=0.99, max-waste=0.5, …`` and where the policy came from."""
    return f"{policy_values(report)} ({policy_source(report)})"


def policy_source(report: CheckReport) -> str:
    """``from FILE`` or ``defaults and flags``."""
    return f"from {report.policy_file}" if report.policy_file else "defaults and flags"


def verdict(report: CheckReport) -> str:
    """One line: how many adapters were checked and how they fared."""
    checked = len(report.adapters) + len(report.errors)
    failed = len({f.adapter for f in report.findings})
    passed = len(report.adapters) - failed
    parts = [f"{checked} adapter{'s' if checked != 1 else ''} checked", f"{passed} passed"]
    if failed:
        parts.append(f"{failed} failed with {len(report.findings)} finding(s)")
    if report.errors:
        parts.append(f"{len(report.errors)} unreadable")
    return f"{report.status.upper()}: " + ", ".join(parts)
