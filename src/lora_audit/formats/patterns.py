"""PEFT's ``rank_pattern`` / ``alpha_pattern`` key matching, reproduced exactly.

PEFT (``peft.utils.other.get_pattern_key``) walks the pattern keys in order and takes the
first ``key`` for which ``re.match(rf"(.*\\.)?({key})$", module_name)`` succeeds, where
``module_name`` is the module's path in the base model (no ``base_model.model.`` prefix).
Keys are regular expressions; unmatched keys are ignored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
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
    """The preferred pattern key for ``module_name``: its path without the first segment.

    Before PEFT 0.15 the rule was ``.*\\.{key}$``, under which a full module name never
    matches; a key without the first segment works in every version. Names of fewer than
    three segments keep them all (dropping one would leave a bare ``dense`` or ``q_proj``).
    Use :func:`pattern_keys` to get keys that are also unique among an adapter's modules.

    >>> pattern_key_for("model.layers.0.self_attn.q_proj")
    'layers\\\\.0\\\\.self_attn\\\\.q_proj'
    """
    return re.escape(_tail(module_name))


def _tail(module_name: str) -> str:
    parts = module_name.split(".")
    return ".".join(parts[1:]) if len(parts) >= 3 else module_name


def pattern_keys(module_names: Sequence[str]) -> dict[str, str]:
    """A key for each module that PEFT matches to that module and no other of ``module_names``.

    The key of :func:`pattern_key_for` where it is unique; otherwise the anchored full name
    ``^…$``, which matches exactly one module in PEFT ≥ 0.15. That key is an escaped literal
    ``tail``, which PEFT's rule matches to exactly the modules that end in ``tail`` at a dot
    boundary (or are ``tail``): counting every module's dot-suffixes once answers the
    question for all modules in time linear in their number.
    """
    suffixes = Counter(
        ".".join(parts[i:])
        for parts in (name.split(".") for name in dict.fromkeys(module_names))
        for i in range(len(parts))
    )
    keys = {}
    for name in module_names:
        unique = suffixes[_tail(name)] == 1
        keys[name] = pattern_key_for(name) if unique else f"^{re.escape(name)}$"
    return keys
