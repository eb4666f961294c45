"""A bounded on-disk cache of base weights' left singular bases (``inspect --base --intruders``).

Intruder dimensions need the full thin left basis ``U`` of every base matrix ``W``: one SVD of
``O(out·in·min(out, in))`` that depends on ``W`` alone, so a second audit against the same base
loads it instead.

Key
---
The SHA-256 of the float64 bytes of ``W`` exactly as the SVD sees it — in ``ΔW``'s
``(out, in)`` orientation, after the exact upcast from BF16/F16/F32 — together with its shape
and :data:`FORMAT`. A content hash rather than ``path + size + mtime + tensor name``: it stays
valid when a checkpoint is copied, moved, re-downloaded or reached through the Hugging Face
cache's symlinks, and it cannot go stale when a file is rewritten in place with the same size
and a preserved mtime (``cp -p``, ``rsync -t``, a re-save), which would silently serve the basis
of another matrix. Hashing costs one pass over bytes that were just loaded anyway, about 1 GB/s
(0.1 s for a 4096×4096 matrix, whose SVD takes about a minute on two cores).

Storage
-------
``$LORA_AUDIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lora-audit``, else ``~/.cache/lora-audit``;
entries are ``intruder-bases-v1/<key>-<digest>.npy`` (float64, no pickle; ``digest`` is the
SHA-256 of the basis's own bytes, checked on every load, so a damaged entry is a miss rather
than a wrong answer), written to a temporary name and renamed into place
(:mod:`lora_audit.formats.atomic`), so a reader never sees half a file and two writers of one
key both leave a complete one. The total size is bounded by
``$LORA_AUDIT_CACHE_MAX_BYTES`` (default 16 GiB; 0 turns the cache off): after a write, the
least recently used entries (by mtime, refreshed on every hit) are removed until the rest fit.
A cache that cannot be read or written never fails an audit: an unreadable entry is a miss,
and a failed write is reported to the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt

from lora_audit.formats import atomic

#: Version of the entries' layout and key; a change starts a new folder.
FORMAT = "intruder-bases-v1"
#: The default bound on the cache's total size.
DEFAULT_MAX_BYTES = 16 * 2**30
DIR_ENV = "LORA_AUDIT_CACHE_DIR"
MAX_BYTES_ENV = "LORA_AUDIT_CACHE_MAX_BYTES"


def cache_root() -> Path:
    """The cache folder: ``$LORA_AUDIT_CACHE_DIR``, or ``$XDG_CACHE_HOME/lora-audit``."""
    if explicit := os.environ.get(DIR_ENV):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "lora-audit"


def max_bytes() -> int:
    """The bound on the cache's size, from ``$LORA_AUDIT_CACHE_MAX_BYTES`` (bytes; 0: no cache).

    Raises
    ------
    ValueError
        When the variable is set to something that is not a whole number ``≥ 0``.
    """
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    if not text.isdigit():
        raise ValueError(f"${MAX_BYTES_ENV}={text!r} is not a whole number of bytes")
    return int(text)


def basis_key(w: npt.NDArray[np.float64]) -> str:
    """The cache key of ``W`` (float64, ``(out, in)``): a hash of its shape and bytes."""
    data = np.ascontiguousarray(w, dtype=np.float64)
    digest = hashlib.sha256(f"{FORMAT}:{data.shape[0]}x{data.shape[1]}:".encode())
    digest.update(data.data)  # the contiguous buffer, not a copy
    return digest.hexdigest()


def _digest(u: npt.NDArray[np.float64]) -> str:
    """A checksum of a stored basis (its bytes), 32 hex digits."""
    return hashlib.sha256(np.ascontiguousarray(u).data).hexdigest()[:32]


@dataclass(frozen=True, kw_only=True)
class BasisCache:
    """The cache folder of :data:`FORMAT` entries and its size bound (``limit`` bytes)."""

    folder: Path
    limit: int

    @classmethod
    def default(cls) -> BasisCache:
        """The cache the environment names (see the module docstring)."""
        return cls(folder=cache_root() / FORMAT, limit=max_bytes())

    def load(self, key: str, shape: tuple[int, int]) -> npt.NDArray[np.float64] | None:
        """The basis stored under ``key`` if it has ``shape``, is float64 and matches its
        checksum; else ``None``."""
        if self.limit <= 0 or not key.isalnum():
            return None
        for path in sorted(self.folder.glob(f"{key}-*.npy")):
            try:
                u = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                continue
            if u.dtype != np.float64 or u.shape != shape or path.stem != f"{key}-{_digest(u)}":
                continue
            with contextlib.suppress(OSError):
                os.utime(path)  # most recently used
            return np.asarray(u, dtype=np.float64)
        return None

    def store(self, key: str, u: npt.NDArray[np.float64]) -> bool:
        """Write ``u`` under ``key`` atomically and trim the cache to its bound.

        Returns
        -------
        bool
            ``False`` when nothing was stored: the cache is off, the entry alone exceeds the
            bound, or the write failed (permissions, a full disk).
        """
        data = np.ascontiguousarray(u, dtype=np.float64)
        if self.limit <= 0 or data.nbytes > self.limit or not np.isfinite(data).all():
            return False
        name = f"{key}-{_digest(data)}.npy"
        tmp: str | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic.remove_stale(self.folder)
            fd, tmp = atomic.new_temp_file(self.folder)

            def write(fh: IO[bytes]) -> None:
                np.save(fh, data, allow_pickle=False)

            with os.fdopen(fd, "wb") as fh:
                atomic.fill(fh, write, sync=True)
            atomic.commit(tmp, str(self.folder / name), replace=True)
        except OSError:
            if tmp is not None:
                atomic.discard(tmp)
            return False
        self.trim(keep=name)
        return True

    def trim(self, *, keep: str | None = None) -> None:
        """Remove the least recently used entries (but not the file ``keep``) until the total
        fits ``limit``."""
        entries = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.folder):
                if entry.name.endswith(".npy") and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        st = entry.stat(follow_symlinks=False)
                        entries.append((st.st_mtime, entry.name, st.st_size))
        total = sum(size for _, _, size in entries)
        for _, name, size in sorted(entries):
            if total <= self.limit:
                break
            if name == keep:
                continue
            with contextlib.suppress(OSError):
                os.unlink(self.folder / name)
                total -= size
