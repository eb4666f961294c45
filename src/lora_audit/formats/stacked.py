"""Names of the layers cut out of stacked tensors (one per MoE expert or fused slice).

A reader that reports each expert of a stacked ``(E, …)`` factor as its own layer names the
layer ``<module>[e]`` and its factors ``<key>[e]``; its tensor source resolves such a key to
slice ``e`` of the stored tensor ``<key>``.
"""

from __future__ import annotations

import re

_SLICED = re.compile(r"^(?P<key>.+)\[(?P<index>\d+)\]$")


def sliced(name: str, index: int) -> str:
    """``name[index]``: the layer or factor key of slice ``index`` of a stacked tensor."""
    return f"{name}[{index}]"


def split_sliced(key: str) -> tuple[str, int | None]:
    """``(stored key, slice index)`` of a key made by :func:`sliced`; ``(key, None)`` otherwise."""
    m = _SLICED.match(key)
    if m is None:
        return key, None
    return m["key"], int(m["index"])
