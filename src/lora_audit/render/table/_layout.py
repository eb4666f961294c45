"""Layout shared by the tables: fitting columns to the width, folding names, plain text out.

Nothing here computes a figure; it decides only which cells fit where. The rules, for every
table and width:

- a cell that holds a number or a verdict is never cut: such columns never wrap, and the
  table is laid out so that they fit;
- when the width is short, decorative columns (sparklines) go first, then the columns a
  table marks as optional;
- names fold at ``.``, ``_``, ``/`` or ``-`` boundaries, mid-word only when one segment is
  wider than the whole column;
- no line ends in spaces and no line is longer than the width.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from rich import box
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

#: Room a name column asks for before optional columns are dropped to make it.
NAME_WANT = 24
#: The narrowest name column; below it nothing more is dropped.
NAME_MIN = 12

if TYPE_CHECKING:
    from lora_audit.render.table._blocks import BlockHeaders

_BREAK = re.compile(r"(?<=[._/\-])")


def fold(name: str, width: int) -> list[str]:
    """``name`` in pieces of at most ``width`` cells, broken after ``.``, ``_``, ``/`` or ``-``
    where possible (a segment wider than ``width`` is split where it must be)."""
    if cell_len(name) <= width or width < 1:
        return [name]
    parts: list[str] = []
    line = ""
    for piece in _BREAK.split(name):
        if line and cell_len(line + piece) > width:
            parts.append(line)
            line = ""
        while cell_len(piece) > width:
            cut = _cut(piece, width - cell_len(line))
            if not cut:
                parts.append(line)
                line, cut = "", _cut(piece, width)
            parts.append(line + cut)
            line, piece = "", piece[len(cut) :]
        line += piece
    parts.append(line)
    return [p for p in parts if p]


def _cut(text: str, cells: int) -> str:
    """The longest start of ``text`` that fits in ``cells``."""
    out = ""
    for char in text:
        if cell_len(out + char) > cells:
            break
        out += char
    return out


def fold_label(label: str, width: int) -> str:
    """A (possibly indented) name folded to ``width``; continuation lines indented two more."""
    lead = len(label) - len(label.lstrip(" "))
    if cell_len(label) <= width:
        return label
    first, *rest = fold(label[lead:], max(width - lead, 1))
    lines = [" " * lead + first]
    indent = " " * min(lead + 2, max(width - 4, 0))
    for part in rest:
        lines += [indent + p for p in fold(part, max(width - len(indent), 1))]
    return "\n".join(lines)


def wrap_words(text: str, width: int) -> list[str]:
    """``text`` wrapped at spaces to ``width``; a word wider than that is :func:`fold`-ed."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if cell_len(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        *full, line = fold(word, width)
        lines += full
    lines.append(line)
    return lines


def title(text: str, *, width: int) -> Text:
    """A table's title: bold, left-aligned, wrapped at spaces (never cut with an ellipsis)."""
    return Text("\n".join(wrap_words(text, width)), style="bold")


@dataclass(frozen=True, kw_only=True)
class Column:
    """A column of cells that are never wrapped or cut.

    ``drop`` ranks the columns a short width may leave out: 0 (the default) is always shown;
    among the others the highest goes first. Sparklines use :data:`DECORATIVE`; the
    others only when the name column would be narrower than :data:`NAME_MIN` (:func:`fitted`).
    """

    header: str
    cells: Sequence[str | Text]
    justify: Literal["left", "right"] = "right"
    drop: int = 0
    #: The header when the width is short (``None``: the header is short already).
    short: str | None = None

    @property
    def width(self) -> int:
        """The widest cell or the header, in terminal cells."""
        cells = [cell_len(c.plain if isinstance(c, Text) else c) for c in self.cells]
        return max([cell_len(self.header), *cells])


#: ``Column.drop`` of decorative columns (sparklines): the first to go.
DECORATIVE = 10


@dataclass(frozen=True, kw_only=True)
class Row:
    """One row of the name column: a label, an optional block row before it, a red mark after."""

    label: str
    block: str | None = None
    mark: str = ""


@dataclass(frozen=True, kw_only=True)
class Grid:
    """A table to fit: the flexible name column (``rows``) and the fixed ``columns``.

    ``lead`` columns come before the name column, ``columns`` after it.
    """

    name: str
    rows: Sequence[Row]
    columns: Sequence[Column]
    lead: Sequence[Column] = field(default_factory=tuple)


def _overhead(count: int) -> int:
    """Cells a compact table (edge, padding, separators) adds around ``count`` columns."""
    return 2 + 2 * (count - 1)


def fitted(grid: Grid, *, width: int) -> tuple[list[Column], list[Column], int]:
    """The lead and trailing columns that fit beside the name column, and its width.

    While the name column has less room than its longest label (up to :data:`NAME_WANT`):
    decorative columns go, then headers take their short form; while it has less than
    :data:`NAME_MIN`, optional columns go, highest ``drop`` first.
    """
    lead, columns = list(grid.lead), list(grid.columns)
    longest = max([cell_len(grid.name), *(cell_len(r.label + r.mark) for r in grid.rows)])
    want = min(longest, NAME_WANT)

    def room() -> int:
        used = sum(c.width for c in lead + columns)
        return width - used - _overhead(len(lead) + len(columns) + 1)

    def without(gone: Column) -> None:
        nonlocal lead, columns
        lead, columns = [c for c in lead if c is not gone], [c for c in columns if c is not gone]

    while room() < want and (decorative := [c for c in lead + columns if c.drop >= DECORATIVE]):
        without(decorative[-1])
    if room() < want:
        lead, columns = [_short(c) for c in lead], [_short(c) for c in columns]
    while room() < NAME_MIN and (optional := [c for c in lead + columns if c.drop > 0]):
        without(max(reversed(optional), key=lambda c: c.drop))
    return lead, columns, max(min(room(), longest), min(NAME_MIN, longest))


def _short(column: Column) -> Column:
    return dataclasses.replace(column, header=column.short) if column.short else column


def grid_table(grid: Grid, *, width: int, headers: BlockHeaders | None = None) -> Table:
    """``grid`` as a compact rich table no wider than ``width`` (see the module rules)."""
    lead, columns, name_width = fitted(grid, width=width)
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True)
    for c in lead:
        table.add_column(c.header, justify=c.justify, no_wrap=True)
    table.add_column(grid.name, no_wrap=True, width=name_width)
    for c in columns:
        table.add_column(c.header, justify=c.justify, no_wrap=True)
    blank = [""] * len(lead)
    for i, row in enumerate(grid.rows):
        if row.block is not None:
            cell = headers.cell(row.block) if headers is not None else None
            table.add_row(*blank, cell or Text(row.block, style="bold"))
        label = Text(fold_label(row.label + row.mark, name_width))
        if row.mark:
            label.stylize("bold red", len(label) - len(row.mark))
        table.add_row(*(c.cells[i] for c in lead), label, *(c.cells[i] for c in columns))
    return table


def info_grid() -> Table:
    """A two-column ``label  text`` grid; the text wraps at spaces, long words fold."""
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold", no_wrap=True)
    info.add_column(overflow="fold")
    return info


_TRAILING = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$")


def to_text(renderable: RenderableType, *, width: int, color: bool) -> str:
    """``renderable`` printed at ``width``, in colour or not, with no trailing spaces."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        no_color=not color,
        markup=False,  # untrusted names are never console markup
        highlight=False,
        emoji=False,
    )
    console.print(renderable)
    return "\n".join(strip_line(line) for line in buffer.getvalue().split("\n"))


def strip_line(line: str) -> str:
    """``line`` without trailing spaces, also those just before closing escape codes."""
    while True:
        stripped = _TRAILING.sub(r"\1", line)
        if stripped == line:
            return line.rstrip(" ")
        line = stripped


def rank_rule_text(*, mode: str, value: float, min_rank: int, max_rank: int | None) -> str:
    """``energy 0.9``, ``budget 2,000,000, ranks in [2, 8]``: compress's and merge's rule."""
    shown = f"{value:,.0f}" if mode == "budget" else f"{value:g}"  # not 2e+06
    if max_rank is not None:
        return f"{mode} {shown}, ranks in [{min_rank}, {max_rank}]"
    return f"{mode} {shown}" + (f", ranks ≥ {min_rank}" if min_rank > 1 else "")


def add_output_rows(info: Table, *, assumed: str | None, output: str | None, kind: str) -> None:
    """The rows a rewriting command ends with: the loud ASSUMED warning (``assumed`` is what
    was assumed, and why), then where the output was written (``None`` for a dry run)."""
    if assumed is not None:
        info.add_row(
            Text("ASSUMED", style="bold red"),
            Text(f"{assumed}: the output bakes that guess into its factors", style="bold red"),
        )
    if output:
        info.add_row("written", f"{output} ({kind})")
