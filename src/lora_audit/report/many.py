"""Several adapters in one run: one summary row per adapter, and the ``inspect-many`` report.

``lora-audit inspect DIR`` (or ``inspect A B``) that finds more than one adapter reports an
:class:`InspectManyReport`: the inspect report of every adapter, the ones that could not be
read, and one :class:`AdapterRow` each. ``check`` with more than one adapter adds the same rows
to its report (:attr:`~lora_audit.report.check.CheckReport.summary`). One adapter keeps the
report it always had.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lora_audit.report.check import AdapterError
from lora_audit.report.common import (
    SCHEMA_VERSION,
    NotebookRepr,
    ToolInfo,
    short_repr,
    to_dict,
)
from lora_audit.report.inspect import InspectReport, Settings
from lora_audit.report.rows import AdapterRow

#: ``ok`` every adapter was read; ``error`` some could not be (the CLI exits 3).
ManyStatus = Literal["ok", "error"]


@dataclass(frozen=True, kw_only=True)
class InspectManyReport(NotebookRepr):
    """Everything ``lora-audit inspect`` reports about several adapters.

    Attributes
    ----------
    settings
        The options every adapter was audited with.
    adapters
        The inspect report of every adapter read, in audit order (paths as given, each
        directory's finds sorted by name).
    errors
        The adapters that could not be read, in audit order.
    summary
        One row per adapter, read or not, in audit order.
    status
        ``ok``, or ``error`` when an adapter could not be read.
    """

    tool: ToolInfo
    settings: Settings
    adapters: tuple[InspectReport, ...]
    errors: tuple[AdapterError, ...]
    summary: tuple[AdapterRow, ...]
    status: ManyStatus
    schema_version: str = field(default=SCHEMA_VERSION)
    kind: str = "inspect-many"

    def to_dict(self) -> dict[str, object]:
        """The JSON form (``report/schema/inspect-many.schema.json``)."""
        return to_dict(self)

    def __repr__(self) -> str:
        return short_repr(
            self,
            f"status={self.status!r}",
            f"adapters={len(self.adapters)}",
            f"unreadable={len(self.errors)}",
            f"energy={self.settings.energy:g}",
        )
