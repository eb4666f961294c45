"""JSON: the report's ``to_dict`` form, sorted keys, no NaN, ASCII, newline-terminated."""

from __future__ import annotations

import json
from typing import Any

from lora_audit.report import to_dict


def render(report: Any, *, width: int = 100, color: bool = False) -> str:
    """Serialise any report dataclass; ``width`` and ``color`` are ignored."""
    del width, color
    # ensure_ascii: names keep every character, written as \uXXXX escapes, so control
    # characters and lone surrogates from a file never reach the output raw (and it is UTF-8)
    text = json.dumps(to_dict(report), indent=2, sort_keys=True, allow_nan=False, ensure_ascii=True)
    return text + "\n"
