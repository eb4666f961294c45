"""Find every adapter that the paths on a command line refer to, the way ``ruff check .`` finds
files: a named path is always taken; a directory that is not itself one adapter is searched.

What counts as an adapter below a directory:

* a directory with ``adapter_config.json`` and an ``adapter_model.*`` file (PEFT), or with
  mlx-lm's ``adapters.safetensors``: the directory (its own files are not looked at again),
  and the adapter directories directly inside it: PEFT's ``save_pretrained`` writes the
  default adapter at ``d/`` and every other named adapter at ``d/<name>/``
  (:func:`named_adapters`);
* a ``.safetensors`` file whose header holds LoRA factors that a reader knows (kohya, LyCORIS,
  diffusers, PEFT keys); other safetensors files (base models, VAEs) are skipped, and a file
  whose header cannot be read is kept, so that its error is reported rather than hidden;
* a Hugging Face cache repository (``models--org--name``) is followed to its ``main`` snapshot.

Skipped while searching (a path named on the command line is never skipped): hidden entries
(``.git``, ``.venv``), ``__pycache__``, ``node_modules``, symlinked directories (no loops),
and ``checkpoint-*`` directories unless ``include_checkpoints``. The order is deterministic:
the paths as given, each one's finds sorted by name. The search is bounded: more than
:data:`MAX_ENTRIES` directory entries, :data:`MAX_DEPTH` levels or :data:`MAX_ADAPTERS` finds
below one path is refused with a message naming the limit; a streamed run (``--format
jsonl``, which holds no report per adapter) allows :data:`STREAMED_ADAPTERS` adapters and
:data:`STREAMED_ENTRIES` entries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lora_audit.errors import InputError
from lora_audit.formats import holds_adapter, mlx, resolve_files
from lora_audit.formats.hf_cache import is_repo_dir, snapshot_of
from lora_audit.formats.peft import CONFIG_NAME

#: Directory entries one search may look at.
MAX_ENTRIES = 100_000
#: Directory levels below a named path.
MAX_DEPTH = 24
#: Adapters one search may find.
MAX_ADAPTERS = 2_000
#: Adapters one search may find for a streamed run (one path each is held, ~200 bytes).
STREAMED_ADAPTERS = 1_000_000
#: Directory entries one search may look at for a streamed run.
STREAMED_ENTRIES = 10_000_000

_SKIPPED_NAMES = frozenset({"__pycache__", "node_modules"})
_ADAPTER_SUFFIXES = (".safetensors",)


@dataclass(frozen=True, kw_only=True)
class Found:
    """One adapter to audit, or a named path that could not be searched.

    Attributes
    ----------
    path
        The adapter's file or directory, as the readers take it.
    error
        Why ``path`` cannot be audited, found while searching (the pipeline reports it as
        an unreadable adapter); ``None`` otherwise.
    """

    path: Path
    error: InputError | None = None


@dataclass(frozen=True, kw_only=True)
class Discovery:
    """What a search found.

    Attributes
    ----------
    found
        The adapters in audit order (each tensor file once).
    searched
        Whether a directory search found an adapter other than the path named (or skipped
        something), rather than every path naming one adapter.
    skipped_checkpoints
        ``checkpoint-*`` directories not searched (see ``include_checkpoints``).
    skipped_files
        ``.safetensors`` files skipped because their header holds no LoRA factors.
    """

    found: tuple[Found, ...]
    searched: bool = False
    skipped_checkpoints: int = 0
    skipped_files: int = 0


@dataclass(kw_only=True)
class _Search:
    root: Path
    include_checkpoints: bool
    max_entries: int
    max_adapters: int
    entries: int = 0
    found: list[Found] = field(default_factory=list)
    skipped_checkpoints: int = 0
    skipped_files: int = 0

    def count(self, n: int) -> None:
        self.entries += n
        if self.entries > self.max_entries:
            raise _limit(self.root, f"more than {self.max_entries:,} directory entries")

    def add(self, item: Found) -> None:
        self.found.append(item)
        if len(self.found) > self.max_adapters:
            raise _limit(self.root, f"more than {self.max_adapters:,} adapters")


def _limit(root: Path, what: str) -> InputError:
    return InputError(
        f"{root}: {what} below it; stopped searching",
        hint="name a narrower directory, or the adapters themselves",
    )


def discover(
    paths: Sequence[Path], *, include_checkpoints: bool = False, streamed: bool = False
) -> Discovery:
    """Every adapter that ``paths`` name or hold, in a deterministic order.

    Parameters
    ----------
    paths
        Files and directories as given on the command line; repeated ones count once.
    include_checkpoints
        Also search ``checkpoint-*`` directories below a named directory.
    streamed
        The run holds nothing per adapter but its path (``--format jsonl``): the larger
        limits apply.

    Returns
    -------
    Discovery
        A named path that is one adapter (as :func:`~lora_audit.formats.resolve_files` reads
        it) is kept exactly as given, so one adapter reads as it always did.

    Raises
    ------
    InputError
        When a directory tree is beyond the search limits.
    """
    found: list[Found] = []
    seen: set[Path] = set()
    searched = False
    checkpoints = files = 0
    only_checkpoints: list[Found] = []
    for path in dict.fromkeys(paths):
        search = _Search(
            root=path,
            include_checkpoints=include_checkpoints,
            max_entries=STREAMED_ENTRIES if streamed else MAX_ENTRIES,
            max_adapters=STREAMED_ADAPTERS if streamed else MAX_ADAPTERS,
        )
        target = _named(path, search)
        checkpoints += search.skipped_checkpoints
        files += search.skipped_files
        searched |= bool(search.skipped_checkpoints or search.skipped_files)
        if search.found and search.found[0].error is _ONLY_CHECKPOINTS:
            only = Found(path=search.found[0].path, error=_only_checkpoints(search))
            only_checkpoints.append(only)
            continue
        for item in search.found:
            key = _identity(item.path)
            if key not in seen:
                seen.add(key)
                found.append(item)
                searched |= item.path != target
    if not found and only_checkpoints:  # nothing else to audit: say why nothing is
        found = only_checkpoints[:1]
    return Discovery(
        found=tuple(found),
        searched=searched,
        skipped_checkpoints=checkpoints,
        skipped_files=files,
    )


def _named(path: Path, search: _Search) -> Path:
    """Add what one named path stands for; the path it reads as (a cache's snapshot)."""
    if not path.is_dir():  # a file, or nothing: read (or refused) as named
        search.add(Found(path=path))
        return path
    target = path
    if is_repo_dir(path):
        try:
            target = snapshot_of(path)
        except InputError as exc:
            search.add(Found(path=path, error=exc))
            return path
    whole = _resolves(target)
    if whole:
        search.add(Found(path=target))
        if _is_adapter_dir(target):  # the common case: one adapter directory
            if search.include_checkpoints:
                _walk(target, search, depth=0, own_files=False, checkpoints_only=True)
            else:
                for child in named_adapters(target):
                    search.add(Found(path=child))
            return target
    _walk(target, search, depth=0, own_files=not whole)
    if not search.found:  # nothing below: read it as named, for the reader's own message
        error = _ONLY_CHECKPOINTS if search.skipped_checkpoints else None
        search.add(Found(path=target, error=error))
    return target


#: Marks a named directory holding nothing but skipped checkpoints: beside other adapters it
#: is only counted in the note; alone, it is an error that says how to include them.
_ONLY_CHECKPOINTS = InputError("only checkpoints")


def _resolves(path: Path) -> bool:
    """Whether the readers take ``path`` as one adapter (as they always did)."""
    try:
        resolve_files(path)
    except InputError:
        return False
    return True


def _only_checkpoints(search: _Search) -> InputError:
    n, path = search.skipped_checkpoints, search.found[0].path
    return InputError(
        f"{path}: no adapter here but {n} checkpoint-* "
        f"{'directory' if n == 1 else 'directories'}, which are skipped",
        hint="pass --include-checkpoints to audit them, or `lora-audit trend` to follow them",
    )


def _walk(
    directory: Path,
    search: _Search,
    *,
    depth: int,
    own_files: bool = True,
    checkpoints_only: bool = False,
) -> None:
    """Search ``directory``; an adapter directory found is a leaf, but for its checkpoints."""
    if depth > MAX_DEPTH:
        raise _limit(search.root, f"more than {MAX_DEPTH} directory levels")
    for entry in _entries(directory, search):
        name = entry.name
        if name.startswith(".") or name in _SKIPPED_NAMES:
            continue
        child = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            checkpoint = name.startswith("checkpoint-")
            if checkpoint and not search.include_checkpoints:
                search.skipped_checkpoints += 1
            elif checkpoints_only and not checkpoint:
                if _is_adapter_dir(child):  # PEFT's d/<name>/ beside the default adapter
                    search.add(Found(path=child))
                continue
            elif is_repo_dir(child):
                _repo(child, search, depth=depth)
            elif _is_adapter_dir(child):
                search.add(Found(path=child))
                _walk(child, search, depth=depth + 1, own_files=False, checkpoints_only=True)
            else:
                _walk(child, search, depth=depth + 1)
        elif own_files and name.endswith(_ADAPTER_SUFFIXES) and entry.is_file():
            _file(child, search)


def _repo(path: Path, search: _Search, *, depth: int) -> None:
    try:
        snapshot = snapshot_of(path)
    except InputError as exc:
        search.add(Found(path=path, error=exc))
        return
    if _is_adapter_dir(snapshot):
        search.add(Found(path=snapshot))
        return
    _walk(snapshot, search, depth=depth + 1)


def _file(path: Path, search: _Search) -> None:
    try:
        keep = holds_adapter(path)
    except InputError:
        keep = True  # unreadable: the reader reports why, rather than the search hiding it
    if keep:
        search.add(Found(path=path))
    else:
        search.skipped_files += 1


def _entries(directory: Path, search: _Search) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        search.add(Found(path=directory, error=InputError(f"{directory}: cannot be listed: {exc}")))
        return iter(())
    search.count(len(entries))
    return iter(entries)


def named_adapters(directory: Path) -> list[Path]:
    """The adapter directories directly inside the adapter directory ``directory``.

    ``PeftModel.save_pretrained(d)`` writes the default adapter at ``d/`` and each adapter
    added with ``add_adapter(name, …)`` at ``d/<name>/``: reading ``d`` as one adapter reads
    the default only. Hidden, ``checkpoint-*`` and symlinked directories are not listed; an
    unlistable directory lists nothing (its reader says why).
    """
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)[:MAX_ENTRIES]
    except OSError:
        return []
    return [
        Path(e.path)
        for e in entries
        if not e.name.startswith((".", "checkpoint-"))
        and e.name not in _SKIPPED_NAMES
        and e.is_dir(follow_symlinks=False)
        and _is_adapter_dir(Path(e.path))
    ]


def _is_adapter_dir(path: Path) -> bool:
    """A PEFT directory (config and an ``adapter_model.*`` file) or an mlx-lm one."""
    if (path / mlx.WEIGHTS_NAME).is_file():
        return True
    if not (path / CONFIG_NAME).is_file():
        return False
    return any(p.name.startswith("adapter_model.") for p in path.iterdir())


def _identity(path: Path) -> Path:
    """What makes two finds the same adapter: the tensor file it reads, wherever it lives."""
    try:
        tensor_file, _ = resolve_files(path)
        return tensor_file.resolve()
    except (InputError, OSError):
        return path.absolute()
