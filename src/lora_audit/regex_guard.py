"""Regular expressions from untrusted inputs, matched in bounded time.

Python's ``re`` backtracks: ``(a+)+$`` takes exponential time. :func:`regex_problem` refuses,
before anything is matched, the constructs that backtrack exponentially (a repeat inside a
repeat, an alternation inside a repeat, a backreference) and patterns that are too long or
hold too many unbounded repeats; :func:`match_watchdog` stops the polynomial rest (all
matching in one process gets :data:`MATCH_BUDGET_S` seconds).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from lora_audit.errors import InputError

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
