"""Process-wide CLI state: switches set while the command line is parsed, and the running
command's output guard and settings file. :func:`reset` clears it before every parse."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lora_audit.cli.settings_file import SettingsSource
    from lora_audit.formats.output_guard import OutputGuard

#: ``--debug`` (before or after the command): a traceback with every error.
DEBUG = False
#: ``-q/--quiet``: only errors and the exit code; no report on stdout, no progress, no warnings.
QUIET = False

#: The inputs and outputs of the command running now (set by ``run_guarded``).
OUTPUTS: OutputGuard | None = None
#: The settings file the running command read (``None``: defaults and flags only).
SETTINGS: SettingsSource | None = None


def reset() -> None:
    """Forget every switch (one process may run several commands, as tests do)."""
    global DEBUG, QUIET, OUTPUTS, SETTINGS
    DEBUG = QUIET = False
    OUTPUTS = SETTINGS = None
