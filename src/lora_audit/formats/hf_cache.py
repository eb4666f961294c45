"""The Hugging Face hub cache: a ``models--org--name`` directory stands for its ``main`` snapshot.

``huggingface_hub`` keeps each downloaded repository as::

    hub/models--org--name/
        refs/main                 the commit hash of the revision ``main`` (one line)
        snapshots/<hash>/…        the files of that revision, symlinks into blobs/
        blobs/<sha256>            the file contents

A repository directory is followed to ``snapshots/<refs/main>``; a ``snapshots/<hash>``
directory is an ordinary adapter directory (its symlinks are followed when read). Nothing is
ever downloaded: a missing snapshot is an error that says so.
"""

from __future__ import annotations

import re
from pathlib import Path

from lora_audit.errors import InputError

#: A cache directory of a model repository (``datasets--`` and ``spaces--`` hold no adapters).
_REPO_DIR = re.compile(r"^models--.+")
#: What ``refs/main`` may hold: a commit hash (git's 40 hex digits, or a longer one).
_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")


def is_repo_dir(path: Path) -> bool:
    """Whether ``path`` is a hub cache repository directory (``models--…`` with ``snapshots/``)."""
    return bool(_REPO_DIR.match(path.name)) and (path / "snapshots").is_dir()


def repo_id(path: Path) -> str:
    """``org/name`` from ``models--org--name``."""
    return path.name.removeprefix("models--").replace("--", "/")


def snapshot_of(path: Path) -> Path:
    """The snapshot directory ``refs/main`` names in the cache repository ``path``.

    Raises
    ------
    InputError
        When ``refs/main`` is missing or malformed, or names a snapshot that is not there
        (an interrupted download); the hint names the snapshots that are.
    """
    snapshots = path / "snapshots"
    present = sorted(p.name for p in snapshots.iterdir() if p.is_dir())
    listed = ", ".join(present[:3]) + (", …" if len(present) > 3 else "")
    choose = (
        f"name a snapshot directly: {snapshots}/<hash> ({listed})"
        if present
        else f"download it again with `hf download {repo_id(path)}` (lora-audit never downloads)"
    )
    ref = path / "refs" / "main"
    if not ref.is_file():
        raise InputError(f"{path}: Hugging Face cache repository without refs/main", hint=choose)
    try:
        commit = ref.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{ref}: cannot be read: {exc}", hint=choose) from None
    if not _COMMIT.fullmatch(commit):
        raise InputError(f"{ref}: does not hold a commit hash", hint=choose)
    snapshot = snapshots / commit
    if not snapshot.is_dir():
        raise InputError(
            f"{path}: refs/main names snapshot {commit}, which is not in snapshots/ (an "
            "interrupted download?)",
            hint=choose,
        )
    return snapshot
