"""Read a report's JSON form back into its frozen dataclass, checking every field's type.

The inverse of :func:`~lora_audit.report.common.to_dict` for the report models: each field is
checked against its annotation (``str``, ``int``, ``float``, ``bool``, ``None`` unions,
``Literal``, ``tuple[X, ...]``, fixed tuples, mappings of strings, nested dataclasses), so a
file that does not have the report's shape is refused by name and never half read. Keys the
model does not know are ignored: minor schema versions only add fields. ``null`` is accepted
for a ``float`` field only where ``to_dict`` writes it (a non-finite number), and read as NaN.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from lora_audit.errors import InputError

T = TypeVar("T")

_HINT = "the file is not a report lora-audit wrote, or was edited; write it again"


def from_dict(cls: type[T], data: Any, *, where: str) -> T:
    """The dataclass ``cls`` built from its JSON form ``data``.

    Parameters
    ----------
    cls
        A frozen report dataclass (``TrendReport``, …).
    data
        The parsed JSON.
    where
        The file, for the error message.

    Raises
    ------
    InputError
        Naming the first key whose value is missing or of the wrong type.
    """
    return typing.cast(T, _value(cls, data, where=where, key=""))


def _value(kind: Any, data: Any, *, where: str, key: str) -> Any:
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return _dataclass(kind, data, where=where, key=key)
    if origin is typing.Literal:
        if data in typing.get_args(kind) and not isinstance(data, bool):
            return data
        return _wrong(where, key, f"one of {', '.join(map(repr, typing.get_args(kind)))}", data)
    if origin in (typing.Union, types.UnionType):
        return _union(kind, data, where=where, key=key)
    if origin is tuple:
        return _tuple(kind, data, where=where, key=key)
    if origin is Mapping or kind is Mapping:
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            return dict(data)
        return _wrong(where, key, "an object of strings", data)
    return _scalar(kind, data, where=where, key=key)


def _dataclass(kind: type, data: Any, *, where: str, key: str) -> Any:
    if not isinstance(data, dict):
        return _wrong(where, key, "an object", data)
    hints = typing.get_type_hints(kind)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(kind):
        if not f.init:
            continue
        inner = f"{key}.{f.name}" if key else f.name
        if f.name not in data:
            no_default = f.default is dataclasses.MISSING
            if no_default and f.default_factory is dataclasses.MISSING:
                raise InputError(f"{where}: key {inner!r} is missing", hint=_HINT)
            continue
        values[f.name] = _value(hints[f.name], data[f.name], where=where, key=inner)
    return kind(**values)


def _union(kind: Any, data: Any, *, where: str, key: str) -> Any:
    options = typing.get_args(kind)
    if data is None and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        try:
            return _value(option, data, where=where, key=key)
        except InputError:
            continue
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    return _wrong(where, key, names, data)


def _tuple(kind: Any, data: Any, *, where: str, key: str) -> Any:
    if not isinstance(data, list):
        return _wrong(where, key, "an array", data)
    args = typing.get_args(kind)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(
            _value(args[0], item, where=where, key=f"{key}[{i}]") for i, item in enumerate(data)
        )
    if len(args) != len(data):
        return _wrong(where, key, f"an array of {len(args)}", data)
    return tuple(
        _value(arg, item, where=where, key=f"{key}[{i}]")
        for i, (arg, item) in enumerate(zip(args, data, strict=True))
    )


def _scalar(kind: Any, data: Any, *, where: str, key: str) -> Any:
    if kind is bool and isinstance(data, bool):
        return data
    if kind is int and isinstance(data, int) and not isinstance(data, bool):
        return data
    if kind is float:
        if data is None:  # to_dict writes a non-finite number as null
            return math.nan
        if isinstance(data, int | float) and not isinstance(data, bool):
            return float(data)
    if kind is str and isinstance(data, str):
        return data
    return _wrong(where, key, getattr(kind, "__name__", str(kind)), data)


def _wrong(where: str, key: str, wanted: str, data: Any) -> Any:
    shown = type(data).__name__ if not isinstance(data, str | int | float) else repr(data)[:40]
    raise InputError(f"{where}: {key or 'the file'} must be {wanted}, not {shown}", hint=_HINT)
