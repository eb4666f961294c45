"""The one gate every output goes through: never over an input, never by accident, never half.

An :class:`OutputGuard` knows the inputs of one run (the files it reads and the directories
they are in) and the outputs it has claimed. :meth:`OutputGuard.plan` decides, before any work
is done and again just before the write, what writing a path would do, and refuses (exit 2):

- a path that *is* an input, compared after resolving symlinks (``os.path.realpath``) and by
  device and inode (``st_dev``/``st_ino``, which catches hard links);
- for an adapter output: a directory that contains an input, or a path inside an input
  directory;
- a path another output of the same run writes (``-o x --plot x``, ``--report OUT/…``);
- an existing path, unless ``force`` (``--force``) is on; with it, an existing directory is
  replaced only when it is an adapter directory lora-audit would write (nothing in it but
  ``adapter_model.safetensors`` and ``adapter_config.json``, or nothing at all) — a
  directory holding anything else is never deleted.

Symlinks are written through, as ruff's and pip-audit's ``--output-file`` do: the file the
link points to gets the new content (atomically), the link itself stays. Special files — a
FIFO, a device such as ``/dev/null``, ``/dev/stdout``/``/dev/fd/N`` — are opened and written,
never replaced. Everything else is written to a temporary name beside the target, fsync'ed
and renamed (:mod:`lora_audit.formats.atomic`).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lora_audit.errors import OutputError, UsageError
from lora_audit.formats import atomic

Kind = Literal["file", "directory"]
Data = atomic.Data

#: The only entries of a directory ``--force`` may replace (what ``compress`` writes).
ADAPTER_DIR_FILES = frozenset(
    # PEFT, mlx-lm, and the model card compress carries over
    {"adapter_model.safetensors", "adapter_config.json", "adapters.safetensors", "README.md"}
)
_DESCRIPTOR = re.compile(r"/dev/(stdout|stderr|fd/\d+)|/proc/(self|\d+)/fd/\d+")


@dataclass(frozen=True, kw_only=True)
class OutputTarget:
    """What writing one output will do.

    Attributes
    ----------
    role
        The option that names it (``--output``, ``--plot``, ``--report``), for messages.
    given
        The path as the user wrote it.
    path
        The path written: absolute, symlinks resolved (a special file: as given, absolute).
    special
        A FIFO, device or ``/dev/stdout``-like descriptor: opened and written in place.
    replace
        An existing file or adapter directory is replaced (``--force``).
    """

    role: str
    given: Path
    path: Path
    kind: Kind
    special: bool
    replace: bool


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def _inside(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip(os.sep) + os.sep)


class OutputGuard:
    """The inputs and claimed outputs of one run.

    Parameters
    ----------
    force
        Existing outputs may be replaced (never an input, never a foreign directory).
    """

    def __init__(self, *, force: bool = False) -> None:
        self.force = force
        self._inputs: dict[str, tuple[int, int] | None] = {}
        self._dirs: set[str] = set()
        self._claims: dict[str, OutputTarget] = {}

    def add_input(self, path: Path) -> None:
        """Protect one file or directory that the run reads."""
        real = os.path.realpath(path)
        self._inputs[real] = _identity(real)
        if os.path.isdir(real):
            self._dirs.add(real)

    def add_adapter(self, path: Path) -> None:
        """Protect an adapter argument and every file a reader may take from it.

        A file, and the ``adapter_config.json`` beside it; a directory, its ``*.safetensors``
        and ``adapter_config.json``, and those of its subdirectories (a run of checkpoints).
        """
        self.add_input(path)
        if not path.is_dir():
            self._add_if_file(path.parent / "adapter_config.json")
            return
        for top in (path, *_subdirs(path)):
            for name in _listing(top):
                if name.endswith(".safetensors") or name == "adapter_config.json":
                    self._add_if_file(top / name)

    def add_base(self, path: Path) -> None:
        """Protect a base model: the file, or a directory's safetensors and JSON files."""
        self.add_input(path)
        if path.is_dir():
            for name in _listing(path):
                if name.endswith((".safetensors", ".json")):
                    self._add_if_file(path / name)

    def _add_if_file(self, path: Path) -> None:
        if path.is_file():
            self.add_input(path)

    def plan(
        self, path: Path, *, role: str, kind: Kind = "file", adapter: bool = False
    ) -> OutputTarget:
        """Check ``path`` as the output ``role`` and claim it; see the module docstring.

        Parameters
        ----------
        adapter
            An adapter output (``compress -o``): it may neither contain an input nor lie
            inside an input directory.

        Raises
        ------
        UsageError
            When writing ``path`` would replace an input, another output of this run, an
            existing path without ``force``, or a directory lora-audit did not write.
        """
        absolute = os.path.abspath(path)
        special = _is_special(absolute)
        if special and kind == "directory":
            raise UsageError(
                f"{role} {path} is not a regular file or directory",
                hint="write the adapter to a new path; it is built beside it and renamed",
            )
        real = absolute if special else os.path.realpath(absolute)
        if os.path.basename(real) in {"", ".", ".."}:
            raise UsageError(f"{role} {path}: cannot write at {real}", hint="name a new path")
        self._refuse_inputs(path, role=role, real=real, nested=adapter or kind == "directory")
        self._refuse_claimed(path, role=role, real=real, kind=kind)
        if not (special or adapter):  # after the clashes: they say more than a missing parent
            _require_directory(path, role=role, real=real)
        replace = False if special else self._existing(path, role=role, real=real, kind=kind)
        target = OutputTarget(
            role=role, given=path, path=Path(real), kind=kind, special=special, replace=replace
        )
        self._claims[role] = target
        return target

    def _refuse_inputs(self, given: Path, *, role: str, real: str, nested: bool) -> None:
        ident = _identity(real)
        for item, item_id in self._inputs.items():
            same = real == item or (ident is not None and ident == item_id)
            if same or (nested and (_inside(real, item) and item in self._dirs)):
                raise UsageError(
                    f"{role} {given} would overwrite the input {item}",
                    hint="choose another path; lora-audit never writes over what it reads",
                )
            if nested and _inside(item, real):
                raise UsageError(
                    f"{role} {given} would overwrite the input {item} (it contains it)",
                    hint="choose another path; lora-audit never writes over what it reads",
                )

    def _refuse_claimed(self, given: Path, *, role: str, real: str, kind: Kind) -> None:
        for other in self._claims.values():
            if other.role == role:
                continue
            mine, theirs = real, str(other.path)
            clash = mine == theirs or (other.kind == "directory" and _inside(mine, theirs))
            if clash or (kind == "directory" and _inside(theirs, mine)):
                raise UsageError(
                    f"{role} {given} is also where {other.role} {other.given} is written",
                    hint="give each output its own path",
                )

    def _existing(self, given: Path, *, role: str, real: str, kind: Kind) -> bool:
        """Whether an existing ``real`` is to be replaced; refuse what may not be."""
        try:
            st = os.lstat(real)
        except OSError:
            return False
        is_dir = stat.S_ISDIR(st.st_mode)
        if kind == "file" and is_dir:
            raise UsageError(f"{role} {given} is a directory", hint="name a file to write")
        if kind == "directory" and not is_dir:
            raise UsageError(
                f"{role} {given} exists and is not a directory", hint="choose another path"
            )
        if not self.force:
            raise UsageError(f"{role} {given} already exists", hint="pass --force to replace it")
        if is_dir and (foreign := foreign_entries(Path(real))):
            shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
            raise UsageError(
                f"{role} {given} holds files lora-audit did not write ({shown})",
                hint="--force replaces only an adapter directory (adapter_model.safetensors, "
                "adapter_config.json); choose a new or empty directory",
            )
        return True

    def write(self, path: Path, data: Data, *, role: str, adapter: bool = False) -> Path:
        """Check ``path`` again and write ``data`` (bytes, or a function writing them) to it.

        Returns
        -------
        Path
            The file written (symlinks resolved).

        Raises
        ------
        UsageError
            As :meth:`plan`, and when another process created the path meanwhile.
        OutputError
            When the write fails (permission denied, disk full, …).
        """
        target = self.plan(path, role=role, adapter=adapter)
        if target.special:
            try:
                with open(target.path, "wb") as fh:
                    atomic.fill(fh, data, sync=False)
            except OSError as exc:
                raise _write_error(target, exc) from exc
            return target.path
        if adapter:
            make_parent(target.path, given=path)
        tmp: str | None = None
        try:
            atomic.remove_stale(target.path.parent)
            fd, tmp = atomic.new_temp_file(target.path.parent)  # tracked before it exists
            with os.fdopen(fd, "wb") as fh:
                atomic.fill(fh, data, sync=True)
            atomic.commit(tmp, str(target.path), replace=target.replace)
        except FileExistsError as exc:
            raise _lost_race(target) from exc
        except OSError as exc:
            raise _write_error(target, exc) from exc
        finally:
            if tmp is not None:
                atomic.discard(tmp)
        return target.path

    @contextmanager
    def directory(self, path: Path, *, role: str) -> Iterator[Path]:
        """Yield a temporary directory beside ``path``, renamed into place when the block ends.

        On any error, or a signal, the temporary directory is removed and ``path`` is left
        as it was.
        """
        target = self.plan(path, role=role, kind="directory", adapter=True)
        make_parent(target.path, given=path)
        atomic.remove_stale(target.path.parent)
        try:
            tmp = atomic.new_temp_dir(target.path.parent)  # tracked before it exists
        except OSError as exc:
            raise _write_error(target, exc) from exc
        try:
            yield Path(tmp)
            target = self.plan(path, role=role, kind="directory", adapter=True)
            old = atomic.commit(tmp, str(target.path), replace=target.replace)
            if old is not None and foreign_entries(Path(old)):  # changed since it was checked
                if (ours := atomic.commit(old, str(target.path), replace=True)) is not None:
                    atomic.discard(ours)
                raise UsageError(f"{role} {path} changed while it was being replaced; kept it")
            if old is not None:
                atomic.remove_path(old)
        except FileExistsError as exc:
            raise _lost_race(target) from exc
        except OSError as exc:
            raise _write_error(target, exc) from exc
        finally:
            atomic.discard(tmp)


def foreign_entries(directory: Path) -> list[str]:
    """Entries of ``directory`` that are not regular files ``compress`` writes, sorted."""
    foreign = []
    for name in _listing(directory):
        entry = directory / name
        if name not in ADAPTER_DIR_FILES or not stat.S_ISREG(os.lstat(entry).st_mode):
            foreign.append(name)
    return foreign


def make_parent(path: Path, *, given: Path) -> None:
    """Create the directory ``path`` goes in.

    Raises
    ------
    OutputError
        When it cannot be created (a component is a file, permission denied, …).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        hint = (
            "a component of the path is an existing file"
            if isinstance(exc, FileExistsError | NotADirectoryError)
            else "check write permission"
        )
        raise OutputError(
            f"{given}: cannot create the directory {path.parent}: {exc.strerror or exc}",
            hint=hint,
        ) from exc


def _is_special(absolute: str) -> bool:
    """A descriptor path (``/dev/stdout``) or an existing file neither regular nor a directory."""
    if _DESCRIPTOR.fullmatch(absolute):
        return True
    try:
        mode = os.stat(absolute).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _listing(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


def _subdirs(directory: Path) -> list[Path]:
    return [directory / n for n in _listing(directory) if (directory / n).is_dir()]


def _lost_race(target: OutputTarget) -> UsageError:
    return UsageError(
        f"{target.role} {target.given} already exists (written by another process meanwhile)",
        hint="pass --force to replace it",
    )


def _require_directory(given: Path, *, role: str, real: str) -> None:
    """A report or picture goes into an existing directory (only ``compress -o`` makes one).

    Raises
    ------
    OutputError
        When the directory ``given`` would be written in does not exist or is not one.
    """
    parent = os.path.dirname(real)
    if os.path.isdir(parent):
        return
    shown = os.path.dirname(given) or "."
    if os.path.lexists(parent):
        raise OutputError(
            f"{role} {given}: {shown} is not a directory", hint="choose a path in a directory"
        )
    raise OutputError(
        f"{role} {given}: the directory {shown} does not exist",
        hint=f"create it first (mkdir -p {shown}) or write into an existing directory",
    )


_WRITE_HINTS = {
    errno.ENOENT: "the directory it goes in does not exist (any more); create it first",
    errno.ENOTDIR: "a component of the path is a file, not a directory",
    errno.EACCES: "you may not write there: choose a directory you can write to",
    errno.EPERM: "you may not write there: choose a directory you can write to",
    errno.EROFS: "the file system is read-only: choose another directory",
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is exhausted: free some space or write elsewhere",
}


def _write_error(target: OutputTarget, exc: OSError) -> OutputError:
    hint = _WRITE_HINTS.get(
        exc.errno or 0, "check free disk space and write permission on the output directory"
    )
    return OutputError(f"{target.given}: cannot write: {exc.strerror or exc}", hint=hint)
