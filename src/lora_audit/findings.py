"""The one finding type: a broken rule, as ``check``'s rules return it and its report holds it.

``decisions`` builds findings (the gate's rules, trend's drift) and ``report`` stores them in
:class:`~lora_audit.report.CheckReport` and :class:`~lora_audit.report.TrendReport`; both
import this module, which imports only the standard library (no numpy), so the report stays a
leaf and the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ERROR", "WARNING", "Finding", "Severity"]

Severity = Literal["error", "warning"]
"""``"error"`` fails the gate; ``"warning"`` is reported only (trend's drift without
``--fail-on-drift``)."""

#: Severity of every finding check's rules produce (all of them fail the gate).
ERROR: Literal["error"] = "error"
#: Severity of a finding that is reported without failing.
WARNING: Literal["warning"] = "warning"


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One broken rule (``lora-audit check``, or ``trend``'s drift).

    Attributes
    ----------
    adapter
        The adapter's path as given (``AdapterInfo.path``).
    layer
        The layer concerned, or ``None`` for a finding about the whole adapter.
    rule
        The rule's name (``"max-waste"``).
    measured, limit
        The measured value and the limit it breaks.
    message
        What is wrong, without the adapter and layer names (renderers add them).
    fix
        What to do about it.
    severity
        ``"error"`` (fails the gate) or ``"warning"`` (reported only).
    """

    adapter: str
    layer: str | None
    rule: str
    measured: float | int
    limit: float | int
    message: str
    fix: str
    severity: Severity = ERROR
