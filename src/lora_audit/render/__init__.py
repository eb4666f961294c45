"""Renderers: each turns a finished report into text, and never computes.

A renderer is a function ``(report, *, width, color) -> str``. :data:`RENDERERS` maps
``(report kind, format)`` to the function; the CLI offers exactly the formats registered for
its report kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lora_audit.errors import UsageError
from lora_audit.output_format import OutputFormat as OutputFormat
from lora_audit.render import (
    github,
    github_trend_compare,
    json_,
    junit,
    many,
    markdown,
    markdown_trend_compare,
    table,
)
from lora_audit.render.table import full_finetune

Renderer = Callable[..., str]

#: ``(report.kind, format) → renderer``.
RENDERERS: dict[tuple[str, OutputFormat], Renderer] = {
    ("inspect", OutputFormat.TABLE): table.render_inspect,
    ("inspect", OutputFormat.JSON): json_.render,
    ("inspect", OutputFormat.MARKDOWN): markdown.render_inspect,
    ("inspect-many", OutputFormat.TABLE): many.inspect_many(table.render_inspect, many.rows_table),
    ("inspect-many", OutputFormat.JSON): json_.render,
    ("inspect-many", OutputFormat.MARKDOWN): many.inspect_many(
        markdown.render_inspect, many.rows_markdown, error=many.markdown_error
    ),
    # with several adapters, check's renderers end with one row per adapter (render/many.py)
    ("check", OutputFormat.TABLE): many.with_rows(
        table.render_check, many.rows_table, separator="\n"
    ),
    ("check", OutputFormat.JSON): json_.render,
    ("check", OutputFormat.MARKDOWN): many.with_rows(markdown.render_check, many.rows_markdown),
    ("check", OutputFormat.GITHUB): many.with_rows(github.render_check, many.rows_github),
    ("check", OutputFormat.JUNIT): many.with_junit_rows(junit.render_check),
    ("compress", OutputFormat.TABLE): table.render_compress,
    ("compress", OutputFormat.JSON): json_.render,
    ("trend", OutputFormat.TABLE): table.render_trend,
    ("trend", OutputFormat.JSON): json_.render,
    ("trend", OutputFormat.MARKDOWN): markdown_trend_compare.render_trend,
    ("trend", OutputFormat.GITHUB): github_trend_compare.render_trend,
    ("compare", OutputFormat.TABLE): table.render_compare,
    ("compare", OutputFormat.JSON): json_.render,
    ("compare", OutputFormat.MARKDOWN): markdown_trend_compare.render_compare,
    ("compare", OutputFormat.GITHUB): github_trend_compare.render_compare,
    ("merge", OutputFormat.TABLE): table.render_merge,
    ("merge", OutputFormat.JSON): json_.render,
    ("inspect-full", OutputFormat.TABLE): full_finetune.render_full,
    ("inspect-full", OutputFormat.JSON): json_.render,
    ("extract", OutputFormat.TABLE): full_finetune.render_extract,
    ("extract", OutputFormat.JSON): json_.render,
}


class UnsupportedFormat(UsageError, ValueError):
    """A format that is not registered for a report kind (exit 2)."""


def formats_for(kind: str) -> list[OutputFormat]:
    """The formats registered for a report kind, in declaration order."""
    return [fmt for fmt in OutputFormat if (kind, fmt) in RENDERERS]


def render(report: Any, fmt: OutputFormat, *, width: int = 100, color: bool = False) -> str:
    """Render ``report`` (any report with a ``kind``) in ``fmt``."""
    try:
        renderer = RENDERERS[(report.kind, fmt)]
    except KeyError:
        offered = ", ".join(f.value for f in formats_for(report.kind))
        raise UnsupportedFormat(
            f"--format {fmt.value} is not available for {report.kind}", hint=f"use {offered}"
        ) from None
    return renderer(report, width=width, color=color)
