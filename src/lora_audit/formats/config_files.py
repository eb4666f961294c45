"""Bounded reading of the small text files lora-audit trusts least: JSON and TOML configs.

Every config, index, metadata blob and policy file goes through :func:`read_bounded` and
:func:`parse_json` / :func:`parse_toml`, so that each one is

* opened only if it is a regular file (``O_NONBLOCK`` then ``fstat``: a FIFO, a device such
  as ``/dev/zero``, a socket or a directory is refused without blocking or reading);
* read only up to :data:`MAX_CONFIG_BYTES` (the read stops one byte past the limit);
* parsed into plain data no deeper than :data:`MAX_DEPTH` levels, with no duplicate keys
  (JSON), and no parser error (``RecursionError``, Python's integer-digit limit) escaping as
  anything but a one-line :class:`~lora_audit.errors.InputError`.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from lora_audit.errors import InputError

#: Largest JSON/TOML config accepted, in bytes (real ones are a few KiB; an index a few MiB).
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: Deepest nesting of arrays/objects accepted in a config.
MAX_DEPTH = 64


def file_kind(mode: int) -> str:
    """A word for what a non-regular ``st_mode`` is (``"a FIFO"``, ``"a directory"``, …)."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((word for test, word in kinds if test(mode)), "not a regular file")


def require_regular(path: Path, *, what: str) -> int:
    """Open ``path`` for reading without blocking; refuse anything but a regular file.

    Returns
    -------
    int
        An open file descriptor (blocking mode restored) of a regular file; the caller
        closes it.

    Raises
    ------
    InputError
        When ``path`` cannot be opened or is a FIFO, device, socket or directory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(
                f"{path}: the {what} is {file_kind(mode)}, not a regular file",
                hint="point at a regular file",
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: Path, *, what: str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of regular file ``path``, refusing more than ``limit`` bytes.

    Raises
    ------
    InputError
        For a non-regular file, an OS error, or a file over ``limit`` bytes.
    """
    fd = require_regular(path, what=what)
    try:
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(
            f"{path}: the {what} is over the {limit // (1024 * 1024)} MiB limit",
            hint="this is not a real config file",
        )
    return data


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def parse_json(text: str | bytes, *, where: str) -> Any:
    """Parse JSON strictly: no duplicate keys, bounded depth.

    ``NaN``/``Infinity`` parse as Python does; the validators of the keys lora-audit uses
    refuse non-finite numbers, naming the key.

    Raises
    ------
    InputError
        Naming ``where``, for invalid UTF-8 or JSON, a duplicate key, nesting deeper than
        :data:`MAX_DEPTH`, or an integer over Python's digit limit.
    """
    if text in _CHECKED:  # the same text passed every check before: only the parse is left
        return json.loads(text)
    try:
        value = json.loads(text, object_pairs_hook=_reject_duplicates)
    except _DuplicateKeyError as exc:
        raise InputError(
            f"{where}: key {exc.key!r} appears twice in one JSON object",
            hint="the file is corrupt or crafted; readers disagree on which value wins",
        ) from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply", hint="not a real config") from None
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text") from None
    except ValueError as exc:  # JSONDecodeError, and int() over sys.get_int_max_str_digits
        raise InputError(f"{where}: not valid JSON ({_short(exc)})") from None
    check_depth(value, where=where)
    _remember(text)
    return value


#: Texts (up to :data:`_CHECKED_BYTES` each, :data:`_CHECKED_TEXTS` of them) that passed
#: :func:`parse_json`'s checks. A fleet of adapters trained by one recipe repeats the same
#: ``adapter_config.json`` and safetensors header thousands of times: the duplicate-key hook
#: and the depth walk, which are Python, run once per distinct text, and the C parser does the
#: rest (about a third of reading a small adapter). The parse is fresh each time: callers own
#: the result.
_CHECKED: set[str | bytes] = set()
_CHECKED_TEXTS = 256
_CHECKED_BYTES = 65_536


def _remember(text: str | bytes) -> None:
    if len(text) <= _CHECKED_BYTES:
        if len(_CHECKED) >= _CHECKED_TEXTS:
            _CHECKED.clear()
        _CHECKED.add(text)


def parse_toml(text: bytes, *, where: str) -> dict[str, Any]:
    """Parse TOML (UTF-8 bytes) with bounded depth; every parser failure is an InputError."""
    try:
        value = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text") from None
    except RecursionError:
        raise InputError(f"{where}: TOML nested too deeply", hint="not a real config") from None
    except ValueError as exc:  # TOMLDecodeError, and the integer-digit limit
        raise InputError(f"{where}: not valid TOML ({_short(exc)})") from None
    check_depth(value, where=where)
    return value


def check_depth(value: Any, *, where: str) -> None:
    """Refuse data nested deeper than :data:`MAX_DEPTH` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InputError(
                f"{where}: nested more than {MAX_DEPTH} levels deep", hint="not a real config"
            )
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def load_json_file(path: Path, *, what: str) -> Any:
    """Read a JSON file with :func:`read_bounded` and :func:`parse_json`."""
    return parse_json(read_bounded(path, what=what), where=str(path))


def load_toml_file(path: Path, *, what: str) -> dict[str, Any]:
    """Read a TOML file with :func:`read_bounded` and :func:`parse_toml`."""
    return parse_toml(read_bounded(path, what=what), where=str(path))


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return text if len(text) <= 120 else text[:117] + "…"
