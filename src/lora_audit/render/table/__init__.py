"""Rich tables for people, one module per report kind; shared layout in ``_layout``/``_blocks``.

Find a renderer through :data:`lora_audit.render.RENDERERS`; the names here are re-exported
for the plots and the tests.
"""

from __future__ import annotations

from lora_audit.render.table._blocks import (
    BlockHeaders,
    block_prefix,
    block_rows,
    common_prefix,
    split_block,
)
from lora_audit.render.table._cells import sparkline
from lora_audit.render.table._layout import fold, to_text
from lora_audit.render.table.check import render_check
from lora_audit.render.table.compare import render_compare
from lora_audit.render.table.compress import render_compress
from lora_audit.render.table.inspect import render_inspect
from lora_audit.render.table.merge import render_merge
from lora_audit.render.table.trend import render_trend

__all__ = [
    "BlockHeaders",
    "block_prefix",
    "block_rows",
    "common_prefix",
    "fold",
    "render_check",
    "render_compare",
    "render_compress",
    "render_inspect",
    "render_merge",
    "render_trend",
    "sparkline",
    "split_block",
    "to_text",
]
