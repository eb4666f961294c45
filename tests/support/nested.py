"""Nested report dicts compared with a relative tolerance on every float."""

from __future__ import annotations

import math
from typing import Any


def assert_close(ours: Any, theirs: Any, *, rel: float = 1e-10, where: str = "") -> None:
    """``ours == theirs`` key by key, item by item; floats to ``rel`` relative."""
    if isinstance(theirs, dict):
        assert set(ours) == set(theirs), where
        for key in theirs:
            assert_close(ours[key], theirs[key], rel=rel, where=f"{where}.{key}")
    elif isinstance(theirs, list | tuple):
        assert len(ours) == len(theirs), where
        for i, (x, y) in enumerate(zip(ours, theirs, strict=True)):
            assert_close(x, y, rel=rel, where=f"{where}[{i}]")
    elif isinstance(theirs, float) and not isinstance(ours, bool):
        assert math.isclose(ours, theirs, rel_tol=rel, abs_tol=1e-300), (where, ours, theirs)
    else:
        assert ours == theirs, (where, ours, theirs)
