"""The examples of README.md and docs/*.md: parsed from the Markdown, matched against real output.

What is an example (see docs/development.md, "Examples in the docs run"):

- a fenced block with a line starting ``$ `` is a shell session: each ``$ command`` (continued
  by a trailing ``\\``) is followed by the output it shows;
- a fenced ``python`` block is Python: a doctest when it holds ``>>>`` prompts, else a script
  that must run without an exception;
- an HTML comment on the line before a fence says more about that block:
  ``<!-- docs-example: skip (reason) -->`` (not run; the reason is listed) or
  ``<!-- docs-example: file NAME -->`` (the block's text is written to NAME in the work
  directory before the examples after it run).

Shown output is compared with the real one line by line, after trailing blanks are stripped: a
line that is only ``…`` or ``...`` (optionally followed by a note in parentheses) stands for
any number of lines, and a ``…`` inside a line for any text (which may run over line breaks;
a note in parentheses right after a ``…`` that ends a line is part of what it stands for).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MARKER = re.compile(r"^<!--\s*docs-example:\s*(\w+)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
#: A whole shown line that stands for any number of lines.
ANY_LINES = re.compile(r"^\s*(?:…|\.\.\.)\s*(?:\(.*\))?\s*$")
#: A ``…`` that ends a line with a note in parentheses: the note describes what is left out.
NOTE = re.compile(r"…\s*\([^()]*\)$")


@dataclass(frozen=True, kw_only=True)
class Command:
    """One ``$ command`` of a session and the output shown under it."""

    text: str
    shown: str


@dataclass(frozen=True, kw_only=True)
class Example:
    """One fenced block of a page that the runner acts on."""

    page: Path
    line: int
    kind: Literal["session", "python", "file"]
    body: str
    marker: str | None
    argument: str

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}"

    @property
    def skipped(self) -> bool:
        return self.marker == "skip"


def _marker(lines: list[str], index: int) -> tuple[str | None, str]:
    """The ``docs-example`` comment on the nearest non-blank line above line ``index``."""
    before = index - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    if before >= 0 and (found := MARKER.match(lines[before].strip())):
        return found.group(1), found.group(2)
    return None, ""


def examples(page: Path) -> list[Example]:
    """Every session, Python block and ``file`` block of ``page``, in the order they appear."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Example] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening.groups()
        end = index + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        body = lines[index + 1 : end]
        marker, argument = _marker(lines, index)
        kind: Literal["session", "python", "file"] | None = None
        if marker == "file":
            kind = "file"
        elif any(line.startswith("$ ") for line in body):
            kind = "session"
        elif language == "python":
            kind = "python"
        if marker not in (None, "skip", "file"):
            raise ValueError(f"{page.name}:{index + 1}: unknown docs-example marker {marker!r}")
        if kind is not None:
            text = "\n".join(body) + "\n"
            found.append(
                Example(
                    page=page,
                    line=index + 1,
                    kind=kind,
                    body=text,
                    marker=marker,
                    argument=argument,
                )
            )
        index = end + 1
    return found


def commands(session: str) -> list[Command]:
    """The ``$ command`` lines of a session (with ``\\`` continuations) and their output."""
    parsed: list[Command] = []
    lines = session.splitlines()
    index = 0
    while index < len(lines):
        if not lines[index].startswith("$ "):
            raise ValueError(f"output before the first command: {lines[index]!r}")
        text = lines[index][2:]
        while text.endswith("\\") and index + 1 < len(lines):
            index += 1
            text = text[:-1].rstrip() + " " + lines[index].strip()
        index += 1
        output: list[str] = []
        while index < len(lines) and not lines[index].startswith("$ "):
            output.append(lines[index])
            index += 1
        parsed.append(Command(text=text, shown="\n".join(output)))
    return parsed


def _tidy(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _line_patterns(shown: str) -> list[str]:
    parts = []
    for line in _tidy(shown):
        if ANY_LINES.match(line):
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        pieces = NOTE.sub("…", line).split("…")
        edges = [p.rstrip() if i < len(pieces) - 1 else p for i, p in enumerate(pieces)]
        edges = [p.lstrip() if i > 0 else p for i, p in enumerate(edges)]
        parts.append(r"[\s\S]*?".join(re.escape(p) for p in edges) + r"\n")
    return parts


def pattern(shown: str) -> re.Pattern[str]:
    """A regular expression for the real output that ``shown`` stands for."""
    return re.compile("".join(_line_patterns(shown)))


def mismatch(shown: str, actual: str) -> str | None:
    """``None`` when ``actual`` is what ``shown`` shows, else where they part and a diff."""
    tidy = "".join(line + "\n" for line in _tidy(actual))
    parts = _line_patterns(shown)
    if re.fullmatch("".join(parts), tidy):
        return None
    agree = next((n for n in range(len(parts), -1, -1) if re.match("".join(parts[:n]), tidy)), 0)
    first = _tidy(shown)[agree] if agree < len(parts) else "(the end: more output follows)"
    diff = difflib.unified_diff(_tidy(shown), _tidy(actual), "shown", "actual", lineterm="")
    return f"first shown line that does not match: {first!r}\n" + "\n".join(diff)
