"""The rich table renderer: block rows span the table instead of folding inside a column."""

from __future__ import annotations

import re

import pytest
from conftest import SAMPLES
from rich.cells import cell_len
from rich.text import Text

from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.engine.device import EngineOptions
from lora_audit.formats import load_adapter
from lora_audit.render.table import (
    BlockHeaders,
    _fold,
    _to_text,
    layer_table,
    layer_table_frame,
    render_inspect,
)
from lora_audit.report import InspectReport

KOHYA_BLOCK = "unet_down_blocks_0_attentions_0_transformer_blocks_0_"


def report_of(name: str) -> InspectReport:
    adapter = load_adapter(SAMPLES / name)
    return inspect_adapter(adapter, options=AuditOptions(engine=EngineOptions(device="cpu")))


def visible(text: str) -> list[str]:
    return Text.from_ansi(text).plain.split("\n")


@pytest.mark.parametrize("color", [False, True])
def test_long_block_names_span_the_table_on_one_line(color: bool) -> None:
    text = render_inspect(report_of("sd/kohya-lora.safetensors"), width=100, color=color)
    lines = visible(text)
    assert any(line.rstrip() == f" {KOHYA_BLOCK}" for line in lines)  # whole, on one line
    assert all(cell_len(line) <= 100 for line in lines)
    assert "\ue000" not in text and "\ue001" not in text
    # the rows under the block keep their columns: the same layout as a row outside a block
    rows = [line for line in lines if line.startswith("   attn1_to_k ")]
    assert len(rows) == 2 and rows[0] == rows[1]


@pytest.mark.parametrize("color", [False, True])
def test_blocks_wider_than_the_table_fold_at_name_boundaries(color: bool) -> None:
    headers = BlockHeaders()
    table = layer_table_frame("t", numbers=("r",))
    table.add_row(headers.cell(KOHYA_BLOCK))
    table.add_row("  attn1_to_k", "8")
    text = headers.expand(_to_text(table, width=30, color=color), width=30)
    lines = visible(text)
    assert all(cell_len(line) <= 30 for line in lines)
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("unet_"))
    end = next(i for i, line in enumerate(lines) if "attn1_to_k" in line)
    pieces = [line.strip() for line in lines[start:end]]
    assert "".join(pieces) == KOHYA_BLOCK and len(pieces) > 1
    assert all(piece.endswith("_") for piece in pieces)  # broken after "_", never mid-word


@pytest.mark.parametrize("name", ["minilm-r16", "minilm-r8-rslora-patterns"])
def test_short_blocks_render_as_a_plain_row_would(name: str) -> None:
    # PEFT blocks fit their column: the output is what rich prints with the block in the cell
    report = report_of(name)
    plain = _to_text(layer_table(report), width=100, color=False)
    full = render_inspect(report, width=100)
    assert full.startswith(plain)


def test_fold() -> None:
    assert _fold("a_b", 10) == ["a_b"]
    assert _fold("unet_down_blocks_0_", 10) == ["unet_down_", "blocks_0_"]
    assert _fold("abcdefghijklmnop", 10) == ["abcdefghijklmnop"]  # nowhere to break
    assert all(re.fullmatch(r"[\w.]+", piece) for piece in _fold(KOHYA_BLOCK, 12))


def test_names_with_private_use_characters_are_left_alone() -> None:
    headers = BlockHeaders()
    table = layer_table_frame("path\ue005", numbers=("r",))
    table.add_row(headers.cell("model.layers.0."))
    table.add_row("  q\ue000proj", "8")
    text = headers.expand(_to_text(table, width=40, color=False), width=40)
    assert "path\ue005" in text and "  q\ue000proj" in text
    assert " model.layers.0." in text
