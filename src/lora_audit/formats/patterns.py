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
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from lora_audit.errors import InputError

T = TypeVar("T")


#: Longest pattern key accepted, in characters.
MAX_KEY_CHARS = 500
#: Most unbounded repeats (``*``, ``+``, ``{n,}``, ``{n,m}`` with m > 16) in one key.
MAX_WIDE_REPEATS = 3
#: Seconds all pattern matching of one process may take (a watchdog, main thread only).
MATCH_BUDGET_S = 5.0
_WIDE = 16
_spent = [0.0]


def regex_problem(pattern: str) -> str | None:
    r"""Why ``pattern`` could make ``re`` backtrack for too long, or ``None`` if it cannot.

    Invalid patterns return ``None`` (compiling them reports the error).

    >>> regex_problem(r"layers\.\d+\.self_attn\.(q|k|v)_proj")
    >>> regex_problem(r"(a+)+$")
    'a repeat inside a repeat'
    """
    if len(pattern) > MAX_KEY_CHARS:
        return f"longer than {MAX_KEY_CHARS} characters"
    from re import _parser  # type: ignore[attr-defined]

    try:
        tree = _parser.parse(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return None
    wide = [0]
    stack: list[tuple[Any, bool]] = [(tree, False)]
    while stack:
        node, in_repeat = stack.pop()
        for op, av in node:
            name = str(op)
            if name in {"GROUPREF", "GROUPREF_EXISTS"}:
                return "a backreference"
            if name in {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}:
                _, high, body = av
                repeats = high > 1
                if repeats and in_repeat:
                    return "a repeat inside a repeat"
                if high == _parser.MAXREPEAT or high > _WIDE:
                    wide[0] += 1
                stack.append((body, in_repeat or repeats))
            elif name == "BRANCH":
                if in_repeat:
                    return "an alternation inside a repeat"
                stack.extend((branch, in_repeat) for branch in av[1])
            elif name == "SUBPATTERN":
                stack.append((av[-1], in_repeat))
            elif name in {"ASSERT", "ASSERT_NOT"}:
                stack.append((av[1], in_repeat))
            elif name == "ATOMIC_GROUP":
                stack.append((av, in_repeat))
    if wide[0] > MAX_WIDE_REPEATS:
        return f"more than {MAX_WIDE_REPEATS} unbounded repeats"
    return None


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


def search_names(pattern: re.Pattern[str], names: Sequence[str], *, what: str) -> list[bool]:
    """``pattern.search`` on every name, under :func:`match_watchdog`.

    Raises
    ------
    InputError
        When searching runs past the budget (``what`` names the option or field).
    """
    try:
        with match_watchdog():
            return [pattern.search(name) is not None for name in names]
    except MatchTimeout:
        raise InputError(
            f"{what} {pattern.pattern[:60]!r} took too long to match the layer names",
            hint=f"pattern matching is limited to {MATCH_BUDGET_S:g} s; simplify the pattern",
        ) from None


class MatchTimeout(Exception):
    """Pattern matching ran past :data:`MATCH_BUDGET_S`."""


def _alarm(signum: int, frame: object) -> None:
    raise MatchTimeout


@contextmanager
def match_watchdog() -> Iterator[None]:
    """Raise :class:`MatchTimeout` inside the block once the process's budget is spent.

    ``re`` checks for signals while it backtracks, so a SIGALRM interrupts a runaway match.
    Outside the main thread (or without ``setitimer``) only the time is accounted.
    """
    left = MATCH_BUDGET_S - _spent[0]
    if left <= 0:
        raise MatchTimeout
    armed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    start = time.perf_counter()
    previous: Any = None
    if armed:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, left)
    try:
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        _spent[0] += time.perf_counter() - start


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
