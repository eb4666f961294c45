"""Escaping of untrusted text, one function per output kind, applied where text is rendered.

Tensor names, file and directory names, metadata values and the messages that quote them come
from files the user did not write. The report keeps them as read; a renderer passes each one
through the function for its output before it reaches a terminal, a CI log, a Markdown
summary, an XML file or a picture:

:func:`for_terminal` (tables, stderr)
    No control character (C0, DEL, C1), format character (bidi overrides and isolates,
    zero-width characters), line or paragraph separator, lone surrogate or noncharacter: each
    is written as a visible escape such as ``\\x1b``, ``\\u202e`` or ``\\ud800``, so the text
    is one line of valid UTF-8.
:func:`for_rich` (strings rich parses as markup)
    :func:`for_terminal`, and every rich markup tag (``[bold]``, ``[link=…]``) escaped.
:func:`for_github_data`, :func:`for_github_property` (``--format github``)
    The runner's ``%``-escapes (``%25``, ``%0D``, ``%0A``; in properties also ``%3A`` and
    ``%2C``); the other line breaks (NEL, LS, PS) and controls as visible escapes.
:func:`for_markdown` (``--format markdown``)
    HTML (``& < >``) as entities, the characters Markdown gives a meaning
    (``\\ ` * _ [ ] | ~ $``) backslash-escaped.
:func:`for_xml` (JUnit)
    No character XML 1.0 forbids (the XML writer escapes the rest).
:func:`for_plot` (``--plot`` labels)
    :func:`for_terminal` (matplotlib cannot draw lone surrogates); mathtext is switched off
    where the figures are drawn.

:func:`escape_strings` applies one of them to every string in a finished report;
:func:`clipped` shortens a value a table shows in part (a 60 MB training comment).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Unicode categories never written raw: controls, format characters (bidi, zero width),
#: line and paragraph separators, surrogates, unassigned code points and noncharacters.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})

_PRINTABLE_ASCII = re.compile(r"[ -~]*")


def is_unsafe(char: str) -> bool:
    """True for a character that :func:`for_terminal` writes as an escape."""
    return unicodedata.category(char) in UNSAFE_CATEGORIES


_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _visible(char: str) -> str:
    """``\\n``, ``\\x1b``, ``\\u202e``, ``\\U000e0001``: as Python writes the character."""
    if char in _SHORT:
        return _SHORT[char]
    point = ord(char)
    if point <= 0xFF:
        return f"\\x{point:02x}"
    if point <= 0xFFFF:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def for_terminal(text: str) -> str:
    """``text`` with every unsafe character (:func:`is_unsafe`) as a visible escape.

    Parameters
    ----------
    text
        Any string, including lone surrogates (from JSON ``"\\ud800"`` or undecodable file
        names).

    Returns
    -------
    str
        One line of printable text that encodes as UTF-8; unchanged when already safe.
    """
    if _PRINTABLE_ASCII.fullmatch(text):
        return text
    return "".join(_visible(char) if is_unsafe(char) else char for char in text)


#: What rich reads as a tag (``rich.markup.RE_TAGS``): ``[`` and a letter, ``#``, ``/`` or ``@``.
_RICH_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def for_rich(text: str) -> str:
    """:func:`for_terminal`, then every rich markup tag in it escaped (``\\[bold]``), for a
    string rich parses as markup. Rich shows it exactly as :func:`for_terminal` writes it,
    alone or inside a template, unless a tag follows it directly (a trailing backslash would
    then escape that tag: leave a space)."""
    return _RICH_TAG.sub(lambda m: m[1] * 2 + "\\" + m[2], for_terminal(text))


def for_github_data(text: str) -> str:
    """A workflow command's message: ``%``, CR and LF %-escaped, other unsafe characters
    visible, so the command stays on one line and no ``::`` starts another."""
    return for_terminal(text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A"))


def for_github_property(text: str) -> str:
    """A workflow command's property value: :func:`for_github_data`, ``:`` and ``,`` too."""
    return for_github_data(text).replace(":", "%3A").replace(",", "%2C")


_MARKDOWN = {"&": "&amp;", "<": "&lt;", ">": "&gt;"} | {c: "\\" + c for c in "\\`*_[]|~$"}
#: A run of ``_`` between two letters or digits cannot open or close emphasis (CommonMark's
#: flanking rules), so ``q_proj`` stays as it is; every other active character is escaped.
_MARKDOWN_ACTIVE = re.compile(r"(?<=[^\W_])(_+)(?=[^\W_])|[&<>\\`*_\[\]|~$]")


def for_markdown(text: str) -> str:
    """Inline Markdown (GitHub-flavoured) that shows ``text`` as it is: no HTML, no link,
    image, emphasis, code, math or table cell boundary comes from it; one line."""
    return _MARKDOWN_ACTIVE.sub(lambda m: m[1] or _MARKDOWN[m[0]], for_terminal(text))


def for_xml(text: str) -> str:
    """Text an XML 1.0 document may hold: unsafe characters (which include every character
    XML forbids: C0 controls, lone surrogates, U+FFFE/U+FFFF) as visible escapes."""
    return for_terminal(text)


def for_plot(text: str) -> str:
    """A matplotlib label: :func:`for_terminal` (drawn with ``text.parse_math`` off)."""
    return for_terminal(text)


#: The most characters of one metadata value a table shows (the JSON report keeps it all).
SHOWN_CHARS = 300


def clipped(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text``, or its first ``limit`` characters and how long it is: ``… (62,914,560
    characters)``. Applied before escaping and layout, whose cost grows with the text."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def escape_strings(value: T, escape: Callable[[str], str]) -> T:
    """``value`` with ``escape`` applied to every ``str`` inside it.

    Walks dataclass instances (copied, so frozen reports stay untouched), lists, tuples and
    dicts (keys too); other values, and ``str`` subclasses such as enums, are kept.
    """
    return _walk(value, escape)  # type: ignore[no-any-return]


_SCALARS = frozenset({int, float, bool, type(None)})


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    """A dataclass's field names (cached: reports hold thousands of layers)."""
    names = _FIELDS.get(kind)
    if names is None:
        names = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(kind))
    return names


def _walk(value: Any, escape: Callable[[str], str]) -> Any:
    kind = type(value)
    if kind is str:
        return escape(value)
    if kind in _SCALARS:
        return value
    if kind is list or kind is tuple:
        if set(map(type, value)) <= _SCALARS:  # a spectrum, a series: nothing to escape
            return value
        items = [_walk(item, escape) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return kind(items)
    if kind is dict:
        return {_walk(k, escape): _walk(v, escape) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = None
        for name in _field_names(kind):
            old = getattr(value, name)
            if type(old) in _SCALARS:
                continue
            new = _walk(old, escape)
            if new is not old:
                out = out or copy.copy(value)
                object.__setattr__(out, name, new)
        return value if out is None else out
    return value


R = TypeVar("R")


def escaped_report(escape: Callable[[str], str]) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorate a renderer ``(report, **options) -> R`` so that it sees ``report`` with
    ``escape`` applied to every string (:func:`escape_strings`)."""

    def decorate(renderer: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(renderer)
        def wrapper(report: Any, /, **options: Any) -> R:
            return renderer(escape_strings(report, escape), **options)

        return wrapper

    return decorate
