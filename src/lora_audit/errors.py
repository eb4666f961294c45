"""Exit codes and the exceptions that map to them.

This is the one place exit codes are defined:

====  ==========================================================
code  meaning
====  ==========================================================
0     success, no policy findings
1     policy findings (``check``: the adapter wastes too much rank)
2     usage error (bad flag, bad option value, output exists)
3     an input could not be read or is invalid; an output could not be written
70    internal error: a bug in lora-audit (EX_SOFTWARE), not a problem with the input
130   interrupted (SIGINT, ^C): temporary files removed, no output written
143   terminated (SIGTERM): temporary files removed, no output written
====  ==========================================================
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of the ``lora-audit`` command."""

    OK = 0
    FINDINGS = 1
    USAGE = 2
    INPUT = 3
    INTERNAL = 70
    INTERRUPTED = 130
    TERMINATED = 143


class LoraAuditError(Exception):
    """Base class of errors that end a command with a one-line message.

    Parameters
    ----------
    message
        What is wrong, naming the file or tensor concerned.
    hint
        How to fix it; appended to the message after ``" — "``.
    """

    exit_code: ExitCode = ExitCode.INPUT

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class InputError(LoraAuditError):
    """An input file or directory is unreadable, unsupported or invalid (exit 3)."""

    exit_code = ExitCode.INPUT


class OutputError(LoraAuditError):
    """An output could not be written (exit 3)."""

    exit_code = ExitCode.INPUT


class UsageError(LoraAuditError):
    """The command line asks for something inconsistent (exit 2)."""

    exit_code = ExitCode.USAGE


class LoraAuditWarning(UserWarning):
    """A problem that did not stop the audit (an assumed scale, a GPU fallback); the Python
    API issues these through :mod:`warnings` (the command line prints them on stderr)."""


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like ``KeyboardInterrupt`` so that temporary files go (143).

    A ``BaseException``, so that no ``except Exception`` on the way swallows it.
    """
