"""The report formats a command may offer, in a module that imports nothing.

:class:`OutputFormat` is the one list of report formats: :mod:`lora_audit.render` registers a
renderer per ``(report kind, format)``, and the command line names the formats in its options.
It lives outside :mod:`lora_audit.render` so that building the command line (and ``--help``)
loads no renderer and no rich.
"""

from __future__ import annotations

from enum import StrEnum


class OutputFormat(StrEnum):
    """Output formats a command may offer."""

    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"
    GITHUB = "github"
    JUNIT = "junit"
