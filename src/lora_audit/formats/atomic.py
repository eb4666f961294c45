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
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

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
    """Remember a temporary path so that :func:`remove_live` can remove it."""
    _LIVE.add(path)


def untrack(path: str) -> None:
    """Forget a temporary path (renamed into place, or removed)."""
    _LIVE.discard(path)


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
