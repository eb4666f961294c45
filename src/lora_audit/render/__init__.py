"""Renderers: each turns a finished report into text, and never computes.

A renderer is a function ``(report, *, width, color) -> str``. :data:`RENDERERS` maps
``(report kind, format)`` to the function; the CLI offers exactly the formats registered for
its report kind.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from lora_audit.render import json_, table


class OutputFormat(str, Enum):
    """Output formats a command may offer."""

    TABLE = "table"
    JSON = "json"


Renderer = Callable[..., str]

#: ``(report.kind, format) → renderer``.
RENDERERS: dict[tuple[str, OutputFormat], Renderer] = {
    ("inspect", OutputFormat.TABLE): table.render_inspect,
    ("inspect", OutputFormat.JSON): json_.render,
}


def formats_for(kind: str) -> list[OutputFormat]:
    """The formats registered for a report kind, in declaration order."""
    return [fmt for fmt in OutputFormat if (kind, fmt) in RENDERERS]


def render(report: Any, fmt: OutputFormat, *, width: int = 100, color: bool = False) -> str:
    """Render ``report`` (any report with a ``kind``) in ``fmt``."""
    try:
        renderer = RENDERERS[(report.kind, fmt)]
    except KeyError:
        raise ValueError(f"no {fmt.value} renderer for {report.kind} reports") from None
    return renderer(report, width=width, color=color)
