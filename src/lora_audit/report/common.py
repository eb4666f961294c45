"""What every report shares: the schema version, the tool and adapter blocks, and the JSON form."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Bumped on any incompatible change to the JSON form (major) or on additions (minor).
SCHEMA_VERSION = "2.8"


@dataclass(frozen=True, kw_only=True)
class ToolInfo:
    """The program that made the report."""

    name: str
    version: str


@dataclass(frozen=True, kw_only=True)
class AdapterInfo:
    """What was read: where from, in which format, and its configuration."""

    path: str
    tensor_file: str
    format: str
    base_model: str | None
    layer_count: int
    dtypes: tuple[str, ...]
    rank: int | None
    lora_alpha: float | None
    use_rslora: bool
    use_dora: bool
    modules_to_save: tuple[str, ...]
    passthrough_tensors: int
    file_bytes: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: How many layers took their scale from each source (``{"config": 37}``); see
    #: :attr:`LayerReport.scale_source`. ``assumed`` means nothing in the file gave it.
    scale_sources: Mapping[str, int] = field(default_factory=dict)


#: Field metadata: the field is left out of the JSON form while it is empty (a field that
#: only some runs fill, so that the others keep the form they always had).
OMIT_WHEN_EMPTY = "omit_when_empty"


def to_dict(report: Any) -> dict[str, Any]:
    """The JSON-ready form of any report dataclass (tuples → lists, non-finite → None).

    The same as ``dataclasses.asdict`` followed by those conversions, without its deep copy
    of every leaf (reports are frozen and their leaves immutable): about 5× faster, which
    counts when thousands of adapters are written one line each (``--format jsonl``).
    """
    data: dict[str, Any] = _plain_fields(report)
    for f in dataclasses.fields(report):
        if f.metadata.get(OMIT_WHEN_EMPTY) and not data.get(f.name):
            data.pop(f.name, None)
    return data


#: A path longer than this is shown by its tail in a report's ``repr``.
_REPR_PATH = 60


def short_repr(report: object, *facts: str) -> str:
    """A report's notebook ``repr``: its class and a few facts on one line, never its layers.

    The dataclass ``repr`` of a report lists every layer (about 18,000 characters for 37
    layers); this is what ``repr()`` and IPython show instead. ``to_dict()`` has everything.
    """
    return f"{type(report).__name__}({', '.join(facts)})"


def path_repr(path: str) -> str:
    """``path`` quoted, shortened to its last characters when long (``'…/my-adapter'``)."""
    if len(path) > _REPR_PATH:
        path = "…" + path[-(_REPR_PATH - 1) :]
    return repr(path)


class NotebookRepr:
    """IPython's pretty printer shows the short ``repr`` too (no fields: JSON unchanged)."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


#: The field names of each dataclass met by :func:`to_dict` (a cache; the same for every run).
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain_fields(obj: Any) -> dict[str, Any]:
    cls = type(obj)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(obj))
    return {name: _plain(getattr(obj, name)) for name in names}


def _plain(value: Any) -> Any:
    cls = type(value)
    if cls is float:
        return value if math.isfinite(value) else None
    if cls is str or cls is int or cls is bool or value is None:
        return value
    if cls is tuple or cls is list:
        return [_plain(v) for v in value]
    if cls in _FIELD_NAMES or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return _plain_fields(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
