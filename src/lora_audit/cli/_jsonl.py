"""``--format jsonl`` on the command line: lines written as they finish, never cut.

Where the lines go: stdout, or with ``-o FILE`` the file itself, line by line (so that a long
census can be followed with ``tail -f`` and resumed): a new file, or with ``--force`` an
existing one emptied first; with ``--resume FILE -o FILE`` (the same file) the new lines are
appended after the complete lines already there. The file is not built under a temporary
name and renamed, as every other output is: an interrupted census must keep what it did.

Never half a line: SIGINT and SIGTERM are blocked in the writing thread (and in every thread
it starts, which inherit the mask) while the run goes on, and let through only between two
lines (:meth:`LineSink.write`): a ^C takes effect, by the signal's default action (exit
130/143, see :mod:`lora_audit.formats.atomic`), once the lines finished so far are written
(they are written in chunks of whole lines, at least once a second), at most one adapter's
audit later. What the file holds then is a valid prefix: complete lines, no summary
line; ``--resume FILE`` skips its adapters. Only SIGKILL or a power loss can cut a line; the
reader of ``--resume`` drops such a tail and the appending writer cuts it off first.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from lora_audit.errors import ExitCode, OutputError, UsageError

if TYPE_CHECKING:
    from lora_audit.commands.stream import LineRun
    from lora_audit.formats.discovery import Found
    from lora_audit.formats.resume import EarlierLine

_SIGNALS = {signal.SIGINT, signal.SIGTERM}
#: Lines are written in chunks of about this many bytes (a write per 15 kB line cost a tenth
#: of a small adapter's audit on a busy disk) …
FLUSH_BYTES = 1 << 16
#: … or at least this often, so that ``tail -f`` follows the run.
FLUSH_SECONDS = 1.0
#: The exit code of a run by its summary's status (as ``exit_code_for`` gives a report's).
_EXIT = {"ok": ExitCode.OK, "pass": ExitCode.OK, "fail": ExitCode.FINDINGS, "error": ExitCode.INPUT}


@contextmanager
def signals_between_lines() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread (and the threads it starts) while the block
    runs; :func:`signal_window` lets a pending one through."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def signal_window() -> None:
    """Deliver a pending SIGINT or SIGTERM now (between two lines), then block them again."""
    if signal.sigpending() & _SIGNALS:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)


class LineSink:
    """Where one run's lines go: a file descriptor, written one whole line at a time.

    Parameters
    ----------
    fd
        The descriptor (``1`` for stdout); ``None`` writes nothing (``--quiet``).
    sync
        fsync when closed (a regular file).
    owned
        Close the descriptor when done.
    """

    def __init__(
        self,
        fd: int | None,
        *,
        sync: bool = False,
        owned: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        self._fd = fd
        self._sync = sync
        self._owned = owned
        self._stream = stream  # a text stream without a descriptor (a test's captured stdout)
        self._pending: list[bytes] = []
        self._size = 0
        self._flushed = time.monotonic()

    def write(self, text: str) -> None:
        """Take one whole line; write the lines taken when :data:`FLUSH_BYTES` or
        :data:`FLUSH_SECONDS` are reached or a signal is pending, then let the signal through."""
        if self._stream is not None:
            self._stream.write(text)
            self._stream.flush()
        elif self._fd is not None:
            self._pending.append(text.encode("utf-8"))
            self._size += len(self._pending[-1])
            late = time.monotonic() - self._flushed >= FLUSH_SECONDS
            if self._size >= FLUSH_BYTES or late or signal.sigpending() & _SIGNALS:
                self.flush()
        signal_window()

    def flush(self) -> None:
        """Write the lines taken so far, whole (one ``write`` call per chunk, retried)."""
        if self._fd is None or not self._pending:
            return
        data = memoryview(b"".join(self._pending))
        self._pending, self._size, self._flushed = [], 0, time.monotonic()
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            raise OutputError(f"--output: cannot write a line: {exc}") from exc

    def close(self) -> None:
        """Write what is left, fsync (a regular file) and close (a file this sink opened)."""
        if self._fd is None:
            return
        try:
            self.flush()
            if self._sync:
                os.fsync(self._fd)
        finally:
            if self._owned:
                os.close(self._fd)
            self._fd = None


def stdout_sink(*, quiet: bool) -> LineSink:
    """Lines to stdout (nothing with ``--quiet``)."""
    if quiet:
        return LineSink(None)
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation: captured, no descriptor
        return LineSink(None, stream=sys.stdout)
    return LineSink(fd)


def file_sink(path: Path, *, special: bool, replace: bool, append_at: int | None) -> LineSink:
    """Lines to ``path`` (checked by the output guard before): a device or FIFO as it is; a
    new file; an existing one emptied (``replace``) or, with ``append_at``, cut to that many
    bytes (the complete lines of an earlier run) and appended to."""
    flags = os.O_WRONLY | os.O_CLOEXEC
    if special:
        pass
    elif append_at is not None:
        flags |= os.O_APPEND
    else:
        flags |= os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o666)
        if append_at is not None and not special:
            os.ftruncate(fd, append_at)
    except OSError as exc:
        raise OutputError(f"--output {path}: cannot be written: {exc}") from exc
    return LineSink(fd, sync=not special, owned=True)


def run_lines(
    found: Sequence[Found],
    *,
    run: LineRun,
    alpha: float | None,
    input_format: str,
    output: Path | None,
    resume: Path | None,
) -> int:
    """Audit ``found`` and write its lines (skipping those of ``resume``); the exit code."""
    from lora_audit.cli._common import fail, progress_bar, warn
    from lora_audit.commands.stream import iter_lines
    from lora_audit.formats.resume import read_earlier
    from lora_audit.report.lines import SummaryLine, to_line

    earlier = None if resume is None else read_earlier(resume, command=run.command)
    done = {} if earlier is None else earlier.lines
    _same_settings(done, run=run, resume=resume)
    append_at = None if earlier is None else earlier.complete_bytes
    sink = _open(output, resume=resume, append_at=append_at)
    todo = sum(str(item.path) not in done for item in found)
    summary: SummaryLine | None = None
    try:
        with signals_between_lines(), progress_bar(todo, description=f"{todo} adapters") as bar:
            for line in iter_lines(
                found, run=run, alpha=alpha, input_format=input_format, done=done,
                warn=warn, on_error=fail,
            ):  # fmt: skip
                if isinstance(line, SummaryLine):
                    summary = line
                    sink.write(to_line(line))
                else:
                    sink.write(line.text)
                    if bar is not None:
                        bar(1)
    finally:
        sink.close()
    assert summary is not None  # iter_lines always ends with it
    return int(_EXIT[summary.status])


def _open(output: Path | None, *, resume: Path | None, append_at: int | None) -> LineSink:
    from lora_audit.cli import _state
    from lora_audit.cli._common import outputs

    if output is None:
        return stdout_sink(quiet=_state.QUIET)
    if append_at is not None and appends(output, resume):
        return file_sink(output, special=False, replace=False, append_at=append_at)
    target = outputs().plan(output, role="--output")
    return file_sink(target.path, special=target.special, replace=target.replace, append_at=None)


def appends(output: Path | None, resume: Path | None) -> bool:
    """Whether ``-o`` names the ``--resume`` file (an existing one): then it is appended to."""
    if output is None or resume is None:
        return False
    try:
        return os.path.samefile(output, resume)
    except OSError:
        return False


def _same_settings(done: Mapping[str, EarlierLine], *, run: LineRun, resume: Path | None) -> None:
    """Refuse to resume a file whose reports were made with other energy, coverage or method."""
    s = run.settings
    now = (s.energy, s.coverage, s.method)
    for path, line in done.items():
        if line.settings is not None and line.settings != now:
            energy, coverage, method = line.settings
            raise UsageError(
                f"--resume {resume}: {path} was audited with energy {energy}, coverage "
                f"{coverage}, method {method}; this run uses {now[0]}, {now[1]}, {now[2]}",
                hint="rerun with the same options, or start a new file",
            )
