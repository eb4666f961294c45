"""The settings file of one run, applied the same way by every command: defaults < file < flags.

Each command calls :func:`read_settings` first (``--config``/``--no-config``), then takes
each setting it has through :func:`number` (``energy``, ``coverage``) or
:func:`report_format`; the file's ``color`` reaches the renderer through
:func:`~lora_audit.cli._common.emit_report`. What a file holds is validated when it is read
(:mod:`lora_audit.cli.settings_file`), a flag when it is parsed.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from lora_audit.cli import _state
from lora_audit.cli._common import check_fraction, outputs, warn
from lora_audit.cli.settings_file import SettingsSource, default, load_settings
from lora_audit.errors import UsageError

F = TypeVar("F", bound=StrEnum)


def read_settings(*, config: Path | None, no_config: bool) -> SettingsSource | None:
    """The settings file for this run: ``--config FILE``, or the one found upward from the
    working directory; ``None`` with ``--no-config`` or when there is none.

    The file becomes an input of the run (no output may replace it).

    Raises
    ------
    UsageError
        For ``--config`` with ``--no-config``.
    InputError
        When the file is missing (``--config``), unreadable or invalid.
    """
    if config is not None and no_config:
        raise UsageError("--config and --no-config exclude each other", hint="give one of them")
    if config is not None:
        outputs().add_input(config)
    source = load_settings(config=config, search_from=None if no_config else Path.cwd())
    if source is not None:
        outputs().add_input(source.path)
    _state.SETTINGS = source
    return source


def number(name: str, flag: float | None) -> float:
    """A fraction setting (``energy``, ``coverage``): the flag, else the file's, else the
    default; a flag out of (0, 1] is a usage error."""
    if flag is not None:
        return check_fraction(f"--{name}", flag)
    source = _state.SETTINGS
    value = None if source is None else source.values.get(name)
    return float(default(name) if value is None else value)


def report_format(flag: F | None, *, offered: type[F], command: str) -> F:
    """``--format``: the flag, else the file's ``format`` when ``command`` offers it (else a
    warning), else ``table``."""
    if flag is not None:
        return flag
    source = _state.SETTINGS
    wanted = None if source is None else source.output.get("format")
    if wanted is None:
        return offered("table")
    if wanted in _values(offered):
        return offered(wanted)
    assert source is not None
    warn(
        f"{source.path}: format = {wanted!r} is not a format of {command} "
        f"({', '.join(_values(offered))}); writing a table"
    )
    return offered("table")


def settings_file_shown() -> str | None:
    """The settings file for the report: relative to the working directory when below it."""
    from lora_audit.commands.check import display_path

    return None if _state.SETTINGS is None else display_path(_state.SETTINGS.path)


def _values(offered: Iterable[StrEnum]) -> list[str]:
    return [member.value for member in offered]
