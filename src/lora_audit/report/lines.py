"""``--format jsonl``: one line per adapter as it finishes, then one summary line.

``lora-audit inspect DIR --format jsonl`` (and ``check``) writes an :class:`AdapterLine` for
every adapter, in audit order, as soon as it is done, and a :class:`SummaryLine` at the end:
memory stays that of a few adapters whatever the count, and an interrupted run leaves every
line it wrote complete (``--resume FILE`` skips them on the next run). Each line is the
``to_dict`` form of one of these objects, on one line; ``report/schema/jsonl.schema.json``
validates both kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lora_audit.findings import Finding
from lora_audit.report.check import AdapterError
from lora_audit.report.common import SCHEMA_VERSION, ToolInfo
from lora_audit.report.inspect import InspectReport, Settings
from lora_audit.report.rows import AdapterRow

#: The command that wrote the line.
LineCommand = Literal["inspect", "check"]
#: One adapter: ``inspect`` ``ok`` or ``error``; ``check`` ``pass``, ``fail`` or ``unreadable``.
AdapterStatus = Literal["ok", "error", "pass", "fail", "unreadable"]
#: The run: ``inspect`` ``ok`` or ``error``; ``check`` ``pass``, ``fail`` or ``error``.
RunStatus = Literal["ok", "error", "pass", "fail"]


@dataclass(frozen=True, kw_only=True)
class AdapterLine:
    """One adapter's line.

    Attributes
    ----------
    command
        ``inspect`` or ``check``.
    path
        The adapter as found (the key ``--resume`` skips by).
    status
        See :data:`AdapterStatus`.
    row
        Its summary row, as in the ``inspect-many`` and ``check`` reports.
    report
        Its inspect report; ``None`` when it could not be read.
    error
        Why it could not be read; ``None`` otherwise.
    findings
        ``check``: the policy's (and targets') findings about it; empty for ``inspect``.
    """

    command: LineCommand
    path: str
    status: AdapterStatus
    row: AdapterRow
    report: InspectReport | None
    error: AdapterError | None
    findings: tuple[Finding, ...] = ()
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "adapter"


@dataclass(frozen=True, kw_only=True)
class LineTotals:
    """What the run's adapter lines add up to (the resumed ones included).

    ``passed``, ``failed`` and ``findings`` are ``None`` for ``inspect``, which does not gate.
    """

    adapters: int
    read: int
    unreadable: int
    passed: int | None = None
    failed: int | None = None
    findings: int | None = None


@dataclass(frozen=True, kw_only=True)
class SummaryLine:
    """The last line: settings, totals and the run's status (the exit code follows it).

    Attributes
    ----------
    policy, policy_file, rules, targets
        ``check``: as in its report; ``None`` and empty for ``inspect``.
    resumed
        Adapter lines taken from ``--resume FILE`` rather than audited again.
    """

    command: LineCommand
    tool: ToolInfo
    settings: Settings
    totals: LineTotals
    status: RunStatus
    policy: Mapping[str, Any] | None = None
    policy_file: str | None = None
    rules: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    resumed: int = 0
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "summary"


def to_line(line: AdapterLine | SummaryLine) -> str:
    """The line's text: its ``to_dict`` form as compact JSON (sorted keys, no NaN, ASCII, no
    newline inside), newline-terminated. The CLI and the Python API write the same text."""
    import json

    from lora_audit.report.common import to_dict

    text = json.dumps(
        to_dict(line), sort_keys=True, allow_nan=False, ensure_ascii=True, separators=(",", ":")
    )
    return text + "\n"
