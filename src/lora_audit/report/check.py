"""The ``check`` report: per-adapter findings of the policy rules and the overall status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lora_audit.findings import Finding
from lora_audit.report.common import (
    OMIT_WHEN_EMPTY,
    SCHEMA_VERSION,
    NotebookRepr,
    ToolInfo,
    short_repr,
    to_dict,
)
from lora_audit.report.inspect import InspectReport
from lora_audit.report.rows import AdapterRow

CheckStatus = Literal["pass", "fail", "error"]


@dataclass(frozen=True, kw_only=True)
class AdapterError:
    """An adapter ``check`` could not read or found invalid (exit 3)."""

    path: str
    message: str


AdapterStatus = Literal["pass", "fail", "unreadable"]


@dataclass(frozen=True, kw_only=True)
class AdapterVerdict:
    """How one adapter fared: ``pass``, ``fail`` (it has findings) or ``unreadable``."""

    path: str
    status: AdapterStatus
    findings: int


@dataclass(frozen=True, kw_only=True)
class CheckTotals:
    """How many adapters were checked (readable or not), passed, failed, were unreadable,
    and how many findings there are in all."""

    checked: int
    passed: int
    failed: int
    unreadable: int
    findings: int


@dataclass(frozen=True, kw_only=True)
class CheckReport(NotebookRepr):
    """Everything ``lora-audit check`` reports: the inspect reports plus the findings.

    Attributes
    ----------
    policy
        The policy applied, by field name (``{"energy": 0.99, "max_waste": 0.5, …}``).
    policy_file
        The policy file read, or ``None`` when only defaults and flags applied.
    rules
        Names of the rules that were evaluated (those the policy turns on).
    adapters
        The inspect report of every adapter that could be read, in the order given.
    errors
        The adapters that could not be read, in the order given.
    findings
        Every finding, by adapter (in the order given), then rule, then layer.
    status
        ``"pass"``, ``"fail"`` (findings) or ``"error"`` (an adapter could not be read). The
        CLI maps it to the process exit code (0, 1, 3); the report holds no exit code.
    summary
        With several adapters, one row each (verdict ``pass``, ``fail`` or ``error``).
    """

    tool: ToolInfo
    policy: Mapping[str, float | int]
    policy_file: str | None
    rules: tuple[str, ...]
    adapters: tuple[InspectReport, ...]
    errors: tuple[AdapterError, ...]
    findings: tuple[Finding, ...]
    status: CheckStatus
    #: One verdict per adapter: the readable ones in the order given, then the unreadable.
    verdicts: tuple[AdapterVerdict, ...] = ()
    totals: CheckTotals | None = None
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "check"
    #: One row per adapter (read or not) when more than one was checked; empty (and absent
    #: from the JSON form) for one adapter, whose report keeps the form it always had.
    summary: tuple[AdapterRow, ...] = field(default=(), metadata={OMIT_WHEN_EMPTY: True})
    #: The servers checked against (``check --target``: ``vllm:max-lora-rank=16``, …);
    #: empty (and absent from the JSON form) without one.
    targets: tuple[str, ...] = field(default=(), metadata={OMIT_WHEN_EMPTY: True})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``report/schema/check.schema.json``)."""
        return to_dict(self)

    def __repr__(self) -> str:
        return short_repr(
            self,
            f"status={self.status!r}",
            f"adapters={len(self.adapters)}",
            f"unreadable={len(self.errors)}",
            f"findings={len(self.findings)}",
            f"rules={len(self.rules)}",
        )

    def findings_for(self, adapter: str) -> tuple[Finding, ...]:
        """The findings about one adapter (by its path), in report order."""
        return tuple(f for f in self.findings if f.adapter == adapter)
