"""PEFT's ``rank_pattern`` / ``alpha_pattern`` key matching, reproduced exactly.

PEFT (``peft.utils.other.get_pattern_key``) walks the pattern keys in order and takes the
first ``key`` for which ``re.match(rf"(.*\\.)?({key})$", module_name)`` succeeds, where
``module_name`` is the module's path in the base model (no ``base_model.model.`` prefix).
Keys are regular expressions; unmatched keys are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def match_pattern(patterns: Mapping[str, T], module_name: str) -> T | None:
    """Return the value of the first pattern key that PEFT would match, else ``None``."""
    for key, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({key})$", module_name):
                return value
        except re.error:
            continue  # PEFT would raise; an unusable key simply matches nothing here
    return None


def pattern_key_for(module_name: str) -> str:
    """A pattern key that matches ``module_name`` alone, in every PEFT version.

    The first path segment is dropped (before PEFT 0.15 the rule was ``.*\\.{key}$``, under
    which a full module name never matches) and the rest is escaped.

    >>> pattern_key_for("model.layers.0.self_attn.q_proj")
    'layers\\\\.0\\\\.self_attn\\\\.q_proj'
    """
    parts = module_name.split(".", 1)
    tail = parts[1] if len(parts) == 2 else module_name
    return re.escape(tail)
