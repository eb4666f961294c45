"""JSON: the report's ``to_dict`` form, sorted keys, no NaN, newline-terminated."""

from __future__ import annotations

import json
from typing import Any

from lora_audit.report import to_dict


def render(report: Any, *, width: int = 100, color: bool = False) -> str:
    """Serialise any report dataclass; ``width`` and ``color`` are ignored."""
    del width, color
    return json.dumps(to_dict(report), indent=2, sort_keys=True, allow_nan=False) + "\n"
