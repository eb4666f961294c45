"""Policy files for ``lora-audit check``: find them, validate them, merge them with flags.

Where the policy comes from
---------------------------
Defaults (:class:`~lora_audit.decisions.check_rules.Policy`) < a policy file < command-line flags.

The policy file is the one named by ``--config FILE``, or else the first found walking up
from the working directory, in each directory trying

1. ``lora-audit.toml``: settings at the top level;
2. ``pyproject.toml`` with a ``[tool.lora-audit]`` table (one without it is skipped).

The walk stops after the first directory holding ``.git`` (the repository root) or at the
filesystem root. Keys are the flag names without dashes in front (``max-waste``;
``max_waste`` is accepted too)::

    [tool.lora-audit]
    energy = 0.99
    max-waste = 0.4
    min-rank-used = 1

An unreadable file, malformed TOML, an unknown key, a value of the wrong type or out of
range is an :class:`~lora_audit.errors.InputError` (exit 3) naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_audit.decisions.check_rules import SETTINGS_BY_KEY, Policy, merge
from lora_audit.errors import InputError
from lora_audit.formats.config_files import load_toml_file

#: The file that holds only lora-audit's settings.
OWN_FILE = "lora-audit.toml"
PYPROJECT = "pyproject.toml"
#: The table of ``pyproject.toml`` that holds the settings.
TABLE = ("tool", "lora-audit")


@dataclass(frozen=True, kw_only=True)
class PolicySource:
    """A policy file and the settings it holds.

    Attributes
    ----------
    path
        The file.
    values
        Its validated settings, by :class:`~lora_audit.decisions.check_rules.Policy` field name.
    """

    path: Path
    values: Mapping[str, float | int]


def find_policy_file(start: Path) -> Path | None:
    """The policy file that applies in directory ``start``, or ``None``.

    See the module docstring for the search order.
    """
    for directory in (start.resolve(), *start.resolve().parents):
        own = directory / OWN_FILE
        if _exists(own, file=True):
            return own
        pyproject = directory / PYPROJECT
        if _exists(pyproject, file=True) and _has_table(pyproject):
            return pyproject
        if _exists(directory / ".git", file=False):
            return None
    return None


def _exists(path: Path, *, file: bool) -> bool:
    """Whether something is at ``path``; unreadable directories hold nothing.

    A policy file that is a FIFO, a device or a directory counts (``file=True``), so that
    reading it refuses it clearly instead of the search skipping it in silence.
    """
    try:
        return path.exists() or (file and path.is_symlink())
    except OSError:
        return False


def read_policy_file(path: Path) -> PolicySource:
    """Read and validate a policy file (``lora-audit.toml``-style, or a ``pyproject.toml``).

    Raises
    ------
    InputError
        When the file cannot be read, is not TOML, has no ``[tool.lora-audit]`` table (a
        ``pyproject.toml``), or holds an unknown key or an invalid value.
    """
    data = _load(path)
    if path.name == PYPROJECT:
        table = _table(data, path=path)
        if table is None:
            raise InputError(
                f"{path}: no [tool.lora-audit] table",
                hint="add one, or name a lora-audit.toml with --config",
            )
        where = f"{path}: [tool.lora-audit]"
    else:
        table = data
        where = str(path)
    return PolicySource(path=path, values=validate(table, where=where))


def validate(table: Mapping[str, Any], *, where: str) -> dict[str, float | int]:
    """Check every key and value of a settings table; return them by field name.

    Raises
    ------
    InputError
        For an unknown key, a key given twice (``max-waste`` and ``max_waste``), or a value
        of the wrong type or out of range.
    """
    values: dict[str, float | int] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("_", "-")
        setting = SETTINGS_BY_KEY.get(key)
        if setting is None:
            known = ", ".join(SETTINGS_BY_KEY)
            raise InputError(f"{where}: unknown key {raw_key!r}", hint=f"known keys: {known}")
        if setting.field in values:
            raise InputError(f"{where}: {key!r} is given twice (as - and _ spellings)")
        problem = setting.problem(value)
        if problem is not None:
            raise InputError(f"{where}: {raw_key} = {_toml_repr(value)} {problem}")
        values[setting.field] = value
    return values


def resolve_policy(
    *,
    flags: Mapping[str, float | int],
    config: Path | None,
    search_from: Path | None,
) -> tuple[Policy, Path | None]:
    """Merge defaults < policy file < flags.

    Parameters
    ----------
    flags
        Settings given on the command line, by field name (already validated).
    config
        A policy file named explicitly (``--config``); it must exist.
    search_from
        Directory to search upward from when ``config`` is ``None``; ``None`` reads no file.

    Returns
    -------
    policy, path
        The merged policy and the policy file read (``None`` when none was).
    """
    path = config
    if path is None and search_from is not None:
        path = find_policy_file(search_from)
    policy = Policy()
    if path is not None:
        policy = merge(policy, dict(read_policy_file(path).values))
    return merge(policy, dict(flags)), path


def _load(path: Path) -> dict[str, Any]:
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{path}: no such policy file")
    return load_toml_file(path, what="policy file")


def _table(data: Mapping[str, Any], *, path: Path) -> Mapping[str, Any] | None:
    node: Any = data
    for part in TABLE:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if not isinstance(node, Mapping):
        raise InputError(f"{path}: tool.lora-audit must be a table ([tool.lora-audit])")
    return node


def _has_table(pyproject: Path) -> bool:
    try:
        return _table(_load(pyproject), path=pyproject) is not None
    except InputError:
        return True  # a broken pyproject.toml is reported when it is read, not skipped


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)
