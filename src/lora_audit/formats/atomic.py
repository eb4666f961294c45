"""Temporary files that never outlive their writer, and renames that never replace by accident.

Every file or directory lora-audit writes is first built under a temporary name next to its
target, ``.lora-audit-tmp-<host>-<pid>-<random>``, then renamed into place. The name says whose
it is: a temporary entry whose process is gone (killed with SIGKILL, or the machine lost power)
is removed by the next run that writes into the same directory (:func:`remove_stale`). Entries
of a live process, of another host or of another user are left alone.

The renames (:func:`commit`):

``replace=False``
    ``renameat2(RENAME_NOREPLACE)`` where the kernel and filesystem have it; else a hard link
    (files) or a plain rename, which fails on a non-empty directory. Of two writers racing for
    one new path, exactly one wins; the other gets :class:`FileExistsError`.
``replace=True`` (``--force``)
    A file is renamed over the old one. A directory is swapped with the old one in one step
    (``RENAME_EXCHANGE``), so that the path always holds a complete directory; the old one is
    then in the temporary name, to be removed by the caller.

Signals (:func:`signals_end_at_once`, armed by the CLI while a command runs): SIGTERM and
SIGINT end the process at once, by the kernel's default action, whatever it is doing — a
long LAPACK call, a regular expression, rich's layout; Python runs a signal handler only
between bytecodes, so no handler could. The shell then reports 143 (SIGTERM) or 130 (^C).
Only while a temporary path of this process exists (:func:`track` … :func:`untrack`, which
covers nothing but writing and renaming the finished bytes) are the signals caught instead:
SIGTERM raises :class:`~lora_audit.errors.Terminated` and SIGINT ``KeyboardInterrupt``, the
CLI removes the temporary paths (:func:`remove_live`) and exits 143 or 130. A temporary
name is tracked before the file or directory is created (:func:`new_temp_file`,
:func:`new_temp_dir`), so no kill can leave one behind untracked.

``LORA_AUDIT_TEST_HOLD`` (tests only): when set to a path ``P``, a writer about to commit
creates ``P.<pid>`` and waits (up to 60 s) until ``P`` exists, so that tests can race two
writers or send a signal at a known point. Nothing else reads it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

from lora_audit.errors import Terminated

_T = TypeVar("_T")

#: Prefix of every temporary name lora-audit creates.
TMP_PREFIX = ".lora-audit-tmp-"
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100

#: Temporary paths of this process not yet renamed or removed.
_LIVE: set[str] = set()


#: What a writer puts in a file: its bytes, or a function that writes them to the open file.
Data = bytes | Callable[[IO[bytes]], None]


def fill(fh: IO[bytes], data: Data, *, sync: bool) -> None:
    """Write ``data`` to ``fh`` and flush; with ``sync``, also fsync it to the disk.

    The one writer of file contents: the output guard's atomic files and the adapter writer's
    files inside a new directory both go through it (``sync=False`` only for a terminal,
    pipe or device, which cannot be fsync'ed).
    """
    if callable(data):
        data(fh)
    else:
        fh.write(data)
    fh.flush()
    if sync:
        os.fsync(fh.fileno())


def temp_prefix() -> str:
    """The prefix of this process's temporary names (``mkstemp``/``mkdtemp`` add the rest)."""
    return f"{TMP_PREFIX}{_HOST}-{os.getpid()}-"


def track(path: str) -> None:
    """Remember a temporary path so that :func:`remove_live` can remove it (and, under
    :func:`signals_end_at_once`, catch SIGTERM and SIGINT until it is gone)."""
    _LIVE.add(path)
    _follow_signals()


def untrack(path: str) -> None:
    """Forget a temporary path (renamed into place, or removed)."""
    _LIVE.discard(path)
    _follow_signals()


def new_temp_file(directory: Path) -> tuple[int, str]:
    """Create a temporary file in ``directory`` (mode 0o666 less the umask), tracked before
    it exists; its descriptor, open for writing, and its path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    return _new_temp(directory, lambda path: os.open(path, flags, 0o666))


def new_temp_dir(directory: Path) -> str:
    """Create a temporary directory in ``directory`` (mode 0o777 less the umask), tracked
    before it exists; its path."""
    return _new_temp(directory, lambda path: os.mkdir(path, 0o777))[1]


def _new_temp(directory: Path, create: Callable[[str], _T]) -> tuple[_T, str]:
    """``create`` a fresh temporary name in ``directory``, tracked before it exists (so a
    signal never leaves it behind); what ``create`` returned, and the path."""
    for _ in range(100):
        path = os.path.join(directory, f"{temp_prefix()}{secrets.token_hex(6)}.tmp")
        track(path)
        try:
            return create(path), path
        except FileExistsError:  # someone else's: leave it
            untrack(path)
        except BaseException:  # a signal may land after the creation: remove what is there
            remove_path(path)
            raise
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))


#: Signals that end a command: caught only while a temporary path exists.
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Whether :func:`signals_end_at_once` is active, and whether a signal is being handled.
_STATE = {"armed": False, "terminating": False, "catching": False}
#: The signals it manages: those not ignored when it began (``cmd &`` in a script runs with
#: SIGINT ignored, so that ^C stops only the foreground job; that stays so).
_MANAGED: list[int] = []


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM while a temporary path exists: raise, so that the CLI removes it first."""
    _STATE["terminating"] = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not stop the cleanup
    raise Terminated


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT (^C) while a temporary path exists: ``KeyboardInterrupt``, after the cleanup
    has been made safe from a second ^C."""
    _STATE["terminating"] = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


#: What each managed signal does while a temporary path exists.
_HANDLERS: dict[int, Callable[[int, FrameType | None], None]] = {
    signal.SIGTERM: _terminate,
    signal.SIGINT: _interrupt,
}


def _follow_signals() -> None:
    """Catch the signals while :data:`_LIVE` holds a path, else leave them to the kernel."""
    if not _STATE["armed"] or _STATE["terminating"]:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    catch = bool(_LIVE)
    if catch == _STATE["catching"]:
        return
    _STATE["catching"] = catch
    for sig in _MANAGED:
        signal.signal(sig, _HANDLERS[sig] if catch else signal.SIG_DFL)


@contextlib.contextmanager
def signals_end_at_once() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT end the process at once, except while a
    temporary path exists (see the module docstring). A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    _MANAGED[:] = [sig for sig, handler in previous.items() if handler != signal.SIG_IGN]
    _STATE.update(armed=True, terminating=False, catching=not _LIVE)
    _follow_signals()  # catching is the opposite of what it should be: this sets it
    try:
        yield
    finally:
        _STATE.update(armed=False, terminating=False, catching=False)
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def remove_path(path: str) -> None:
    """Remove a temporary file or directory of ours, quietly, and forget it."""
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    untrack(path)


def discard(path: str) -> None:
    """Remove ``path`` if it is still one of this process's live temporary paths."""
    if path in _LIVE:
        remove_path(path)


def remove_live() -> None:
    """Remove every temporary path of this process (on SIGTERM or ^C)."""
    for path in sorted(_LIVE):
        remove_path(path)


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, someone else's
        return False
    return False


def remove_stale(directory: Path) -> None:
    """Remove the temporary entries in ``directory`` left by dead lora-audit processes.

    Only names of the form ``.lora-audit-tmp-<this host>-<pid>-…`` whose process no longer
    exists and that belong to the current user are removed.
    """
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    mine = f"{TMP_PREFIX}{_HOST}-"
    for entry in entries:
        if not entry.name.startswith(mine):
            continue
        pid_text = entry.name[len(mine) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or not _dead(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            if entry.stat(follow_symlinks=False).st_uid == os.geteuid():
                remove_path(entry.path)


def _renameat2(src: str, dst: str, flags: int) -> bool:
    """``renameat2(2)``; ``False`` when this kernel, libc or filesystem lacks it.

    Raises
    ------
    OSError
        For any other failure (``EEXIST`` when ``dst`` exists under ``RENAME_NOREPLACE``).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return False
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    function.argtypes += [ctypes.c_uint]
    result = function(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}:
        return False
    raise OSError(code, os.strerror(code), dst)


def commit(tmp: str, target: str, *, replace: bool) -> str | None:
    """Rename the finished temporary ``tmp`` to ``target``.

    Returns
    -------
    str or None
        Where the old directory now is when a directory was swapped in (``replace``), for
        the caller to check and remove; ``None`` otherwise.

    Raises
    ------
    FileExistsError
        When ``replace`` is off and ``target`` exists (another writer won the race).
    OSError
        On any other failure; ``tmp`` is left for the caller to remove.
    """
    hold_for_tests()
    is_dir = os.path.isdir(tmp)
    if replace:
        if is_dir and os.path.isdir(target) and not os.path.islink(target):
            if not _renameat2(tmp, target, _RENAME_EXCHANGE):
                stash = f"{tmp}.old"
                os.rename(target, stash)
                os.rename(tmp, target)
                track(stash)
                untrack(tmp)
                return stash
            return tmp  # the old directory is now at tmp (still tracked)
        os.replace(tmp, target)
        untrack(tmp)
        return None
    try:
        if not _renameat2(tmp, target, _RENAME_NOREPLACE):
            if is_dir:
                if os.path.lexists(target):
                    raise FileExistsError(errno.EEXIST, "File exists", target)
                os.rename(tmp, target)  # fails on a directory that is not empty
            else:
                _link_or_rename(tmp, target)
    except OSError as exc:
        if exc.errno in {errno.EEXIST, errno.ENOTEMPTY}:
            raise FileExistsError(errno.EEXIST, "File exists", target) from exc
        raise
    untrack(tmp)
    return None


def _link_or_rename(tmp: str, target: str) -> None:
    """Create ``target`` from the file ``tmp``, failing when it exists."""
    try:
        os.link(tmp, target)  # fails when target exists
    except OSError as exc:
        if exc.errno not in {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}:
            raise
        if os.path.lexists(target):  # no hard links here: the best this filesystem allows
            raise FileExistsError(errno.EEXIST, "File exists", target) from exc
        os.rename(tmp, target)
        return
    os.unlink(tmp)


def hold_for_tests() -> None:
    """Wait at the commit point when ``LORA_AUDIT_TEST_HOLD`` is set (tests only)."""
    hold = os.environ.get("LORA_AUDIT_TEST_HOLD")
    if not hold:
        return
    Path(f"{hold}.{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(hold) and time.monotonic() < deadline:
        time.sleep(0.01)
