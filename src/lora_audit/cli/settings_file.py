"""Settings files: find them, validate them, merge them with flags, for every command.

Where a setting comes from
--------------------------
Defaults < a settings file < command-line flags, for every command that has the setting:

- ``energy`` (``inspect``, ``check``, ``trend``) and ``coverage`` (``inspect``, ``check``), so
  that ``inspect`` and ``check`` in one repository report the same waste;
- the policy of ``check``: ``max-waste``, ``max-layer-waste``, ``min-rank-used``
  (defaults: :class:`~lora_audit.decisions.check_rules.Policy`);
- ``check``'s serving targets: ``target`` (a string or an array of them, as ``--target``
  takes them; the flags replace the file's list);
- output settings: ``format`` (each command takes it when it offers that format, else it
  warns and writes a table) and ``color`` (``auto``, ``always`` or ``never``).

``compress --energy`` is a rank rule, not this setting: the file does not choose it.

The settings file is the one named by ``--config FILE``, or else the first found walking up
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
    format = "table"
    target = ["vllm:max-lora-rank=32", "llama.cpp"]

An unreadable file, malformed TOML, an unknown key, a value of the wrong type or out of
range is an :class:`~lora_audit.errors.InputError` (exit 3) naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_audit.decisions.check_rules import SETTINGS, SETTINGS_BY_KEY, Policy, merge
from lora_audit.errors import InputError
from lora_audit.formats.config_files import load_toml_file

#: The file that holds only lora-audit's settings.
OWN_FILE = "lora-audit.toml"
PYPROJECT = "pyproject.toml"
#: The table of ``pyproject.toml`` that holds the settings.
TABLE = ("tool", "lora-audit")
#: Output settings and their valid values (``format``: every report format of some command).
COLORS = ("auto", "always", "never")
OUTPUT_KEYS = ("format", "color")
#: ``check --target`` in a settings file.
TARGET_KEY = "target"


@dataclass(frozen=True, kw_only=True)
class SettingsSource:
    """A settings file and the settings it holds.

    Attributes
    ----------
    path
        The file.
    values
        Its validated numeric settings, by :class:`~lora_audit.decisions.check_rules.Policy`
        field name (``energy``, ``max_waste``, …).
    output
        Its output settings, by key (``format``, ``color``).
    targets
        Its ``target`` values (``check --target``), validated, as written.
    """

    path: Path
    values: Mapping[str, float | int]
    output: Mapping[str, str] = field(default_factory=dict)
    targets: tuple[str, ...] = ()

    def get(self, name: str) -> float | int | str | None:
        """The file's value of a setting (field name or output key), or ``None``."""
        return self.values.get(name, self.output.get(name))


#: The former name (``check`` read the file alone).
PolicySource = SettingsSource


def find_policy_file(start: Path) -> Path | None:
    """The settings file that applies in directory ``start``, or ``None``.

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

    A settings file that is a FIFO, a device or a directory counts (``file=True``), so that
    reading it refuses it clearly instead of the search skipping it in silence.
    """
    try:
        return path.exists() or (file and path.is_symlink())
    except OSError:
        return False


def read_policy_file(path: Path) -> SettingsSource:
    """Read and validate a settings file (``lora-audit.toml``-style, or a ``pyproject.toml``).

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
    output = {k: v for k, v in table.items() if k in OUTPUT_KEYS}
    numeric = {k: v for k, v in table.items() if k not in (*OUTPUT_KEYS, TARGET_KEY)}
    return SettingsSource(
        path=path,
        values=validate(numeric, where=where),
        output=validate_output(output, where=where),
        targets=validate_targets(table.get(TARGET_KEY, ()), where=where),
    )


def validate_targets(value: Any, *, where: str) -> tuple[str, ...]:
    """The ``target`` setting: a string or an array of strings that ``--target`` accepts.

    Raises
    ------
    InputError
        For another type, or a value ``--target`` refuses (naming it and the accepted forms).
    """
    from lora_audit.decisions.serving_targets import TARGET_HINT, parse_target
    from lora_audit.errors import UsageError

    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise InputError(
            f"{where}: {TARGET_KEY} = {_toml_repr(value)} must be a string or an array of strings",
            hint=TARGET_HINT,
        )
    for text in values:
        try:
            parse_target(text)
        except UsageError as exc:
            raise InputError(f"{where}: {TARGET_KEY} = {_toml_repr(text)}: {exc}") from None
    return tuple(values)


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
            known = ", ".join([*SETTINGS_BY_KEY, *OUTPUT_KEYS, TARGET_KEY])
            raise InputError(f"{where}: unknown key {raw_key!r}", hint=f"known keys: {known}")
        if setting.field in values:
            raise InputError(f"{where}: {key!r} is given twice (as - and _ spellings)")
        problem = setting.problem(value)
        if problem is not None:
            raise InputError(f"{where}: {raw_key} = {_toml_repr(value)} {problem}")
        values[setting.field] = value
    return values


def validate_output(table: Mapping[str, Any], *, where: str) -> dict[str, str]:
    """Check the output settings (``format``, ``color``) of a settings table.

    Raises
    ------
    InputError
        For a value that is not a string naming a report format (``format``) or one of
        ``auto``, ``always``, ``never`` (``color``).
    """
    from lora_audit.output_format import OutputFormat

    allowed = {"format": tuple(f.value for f in OutputFormat), "color": COLORS}
    for key, value in table.items():
        if not (isinstance(value, str) and value in allowed[key]):
            choices = ", ".join(f'"{v}"' for v in allowed[key])
            raise InputError(f"{where}: {key} = {_toml_repr(value)} must be one of {choices}")
    return dict(table)


def load_settings(*, config: Path | None, search_from: Path | None) -> SettingsSource | None:
    """The settings file named by ``config``, else the one found upward from ``search_from``.

    Returns ``None`` when no file applies (or ``search_from`` is ``None``: ``--no-config``).

    Raises
    ------
    InputError
        When ``config`` does not exist, or the file is unreadable or invalid.
    """
    path = config
    if path is None and search_from is not None:
        path = find_policy_file(search_from)
    return None if path is None else read_policy_file(path)


def policy_from(flags: Mapping[str, float | int], source: SettingsSource | None) -> Policy:
    """Defaults < the settings file < flags (both by field name, already validated)."""
    policy = Policy()
    if source is not None:
        policy = merge(policy, dict(source.values))
    return merge(policy, dict(flags))


def default(field_name: str) -> float | int:
    """The default of a numeric setting (``energy`` → 0.99), from :class:`Policy`."""
    assert any(s.field == field_name for s in SETTINGS), field_name
    value: float | int = getattr(Policy(), field_name)
    return value


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
    source = load_settings(config=config, search_from=search_from)
    return policy_from(flags, source), None if source is None else source.path


def _load(path: Path) -> dict[str, Any]:
    if not path.exists() and not path.is_symlink():
        raise InputError(
            f"{path}: no such settings file", hint="name an existing file, or drop --config"
        )
    return load_toml_file(path, what="settings file")


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
