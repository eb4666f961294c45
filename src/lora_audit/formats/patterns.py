"""PEFT's ``rank_pattern`` / ``alpha_pattern`` key matching, reproduced exactly.

PEFT (``peft.utils.other.get_pattern_key``) walks the pattern keys in order and takes the
first ``key`` for which ``re.match(rf"(.*\\.)?({key})$", module_name)`` succeeds, where
``module_name`` is the module's path in the base model (no ``base_model.model.`` prefix).
Keys are regular expressions; unmatched keys are ignored.

An audit reads untrusted files, and Python's ``re`` backtracks: a key like ``(a+)+$`` takes
exponential time. :func:`regex_problem` refuses, before anything is matched, the constructs
that backtrack exponentially (a repeat inside a repeat, an alternation inside a repeat, a
backreference) and keys that are too long or hold too many unbounded repeats; what stays
is polynomial, and :func:`match_pattern` stops the rest with a watchdog (all matching in
one process gets :data:`MATCH_BUDGET_S` seconds).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from lora_audit.errors import InputError
from lora_audit.regex_guard import MATCH_BUDGET_S, MatchTimeout, match_watchdog, regex_problem

T = TypeVar("T")


def check_pattern_keys(patterns: Mapping[str, Any], *, field: str, where: str) -> None:
    """Refuse a ``rank_pattern``/``alpha_pattern`` whose keys could match for too long.

    Raises
    ------
    InputError
        Naming the field and the key, when :func:`regex_problem` finds a problem.
    """
    for key in patterns:
        problem = regex_problem(key)
        if problem is not None:
            shown = key if len(key) <= 60 else key[:57] + "…"
            raise InputError(
                f"{where}: {field} key {shown!r} is refused: {problem} can make matching "
                "take exponential time",
                hint="use plain module names or simple patterns such as 'layers\\.\\d+\\.q_proj'",
            )


def match_pattern(patterns: Mapping[str, T], module_name: str) -> T | None:
    """Return the value of the first pattern key that PEFT would match, else ``None``.

    Raises
    ------
    InputError
        When matching has used up :data:`MATCH_BUDGET_S` (a key that passed
        :func:`regex_problem` but still backtracks polynomially on long names).
    """
    if not patterns:
        return None
    key = ""
    try:
        with match_watchdog():
            for key, value in patterns.items():
                try:
                    if re.match(rf"(.*\.)?({key})$", module_name):
                        return value
                except re.error:
                    continue  # PEFT would raise; an unusable key simply matches nothing here
    except MatchTimeout:
        raise InputError(
            f"pattern key {key[:60]!r} took too long to match module {module_name[:80]!r}",
            hint=f"pattern matching is limited to {MATCH_BUDGET_S:g} s; simplify the pattern",
        ) from None
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
