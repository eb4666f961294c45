"""Layer names in tables: the shared prefix, numbered blocks, and block rows across the width."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence

from rich.cells import cell_len
from rich.text import Text

from lora_audit.render.table._layout import fold


def common_prefix(names: Sequence[str]) -> str:
    """The longest shared prefix of the names that ends at a ``.`` or ``_`` boundary."""
    if len(names) < 2:
        return ""
    prefix = os.path.commonprefix(list(names))  # noqa: RUF071 (character-wise is intended)
    return prefix[: max(prefix.rfind("."), prefix.rfind("_")) + 1]


def block_prefix(names: Sequence[str]) -> str:
    """:func:`common_prefix`, cut back so that no name loses the start of a numbered block.

    Every naming scheme then keeps its numbered blocks: ``model.layers.`` is shared by every
    Llama layer, and cutting it would leave names that start with a bare number.
    """
    prefix = common_prefix(names)
    while prefix and any(name[len(prefix) : len(prefix) + 1].isdigit() for name in names):
        body = prefix[:-1]
        prefix = prefix[: max(body.rfind("."), body.rfind("_")) + 1]
    return prefix


_BLOCK = re.compile(r"^(.*[._]\d+[._])(.+)$")


def split_block(name: str) -> tuple[str, str]:
    """Split a layer name after its last numbered segment: ``("model.layers.3.", "mlp.up")``.

    The table prints each block once, then the short names under it, so that long module
    paths fit the width; the JSON report keeps the full names.
    """
    match = _BLOCK.match(name)
    return (match[1], match[2]) if match else ("", name)


def block_rows(names: Sequence[str], *, prefix: str) -> Iterator[tuple[str | None, str]]:
    """For each name: the block to print before its row (``None`` when it is the same block as
    the row before) and the row's label, indented under a block."""
    current = None
    for name in names:
        group, label = split_block(name.removeprefix(prefix))
        yield (group if group and group != current else None), ("  " if group else "") + label
        current = group


#: Private-use characters stand for block rows until :meth:`BlockHeaders.expand` (one cell each,
#: so rich can crop a squeezed column but never split one).
_FIRST_MARK, _LAST_MARK = 0xE000, 0xF8FF
_MARK = re.compile(f"[{chr(_FIRST_MARK)}-{chr(_LAST_MARK)}]")


class BlockHeaders:
    """Block rows printed across the whole width of a table, not folded inside its first column.

    A per-layer table prints each numbered block once (``model.layers.3.``) above the short
    names in it. In the ``layer`` column, a long block such as kohya's
    ``unet_down_blocks_0_attentions_0_transformer_blocks_0_`` would be folded over several
    lines mid-word. Here the row holds a short placeholder while rich lays the table out, and
    :meth:`expand` writes the block over the rendered row, into the empty cells beside it
    (folded at ``.``/``_`` boundaries only if it is wider than the whole table).
    """

    def __init__(self) -> None:
        self._names: list[str] = []

    def cell(self, name: str) -> Text:
        """The first cell of the row for block ``name``."""
        if _FIRST_MARK + len(self._names) > _LAST_MARK:  # 6,400 blocks: print the rest in place
            return Text(name, style="bold")
        self._names.append(name)
        return Text(chr(_FIRST_MARK + len(self._names) - 1), style="bold")

    def expand(self, text: str, *, width: int) -> str:
        """``text`` (rendered) with every placeholder replaced by its block name."""
        if not self._names:
            return text
        out: list[str] = []
        for line in text.split("\n"):
            match = _MARK.search(line)
            if match is None:
                out.append(line)
                continue
            head, tail = line[: match.start()], line[match.end() :]
            index, before = ord(match[0]) - _FIRST_MARK, Text.from_ansi(head).plain
            if index >= len(self._names) or before.strip():
                out.append(line)  # not a block row: a name that holds such a character
                continue
            for part in fold(self._names[index], width - cell_len(before)):
                out.append(head + part + _shorten(tail, cell_len(part) - 1))
        return "\n".join(out)


def _shorten(tail: str, cells: int) -> str:
    """``tail`` (the rest of a rendered line) with up to ``cells`` padding spaces removed: first
    those right after the block's cell (inside its style), then those at the end of the line."""
    lead = min(len(tail) - len(tail.lstrip(" ")), max(cells, 0))
    tail = tail[lead:]
    end = min(len(tail) - len(tail.rstrip(" ")), max(cells - lead, 0))
    return tail[: len(tail) - end]
