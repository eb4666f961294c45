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
from lora_audit.render.table import BlockHeaders, render_inspect
from lora_audit.render.table._layout import Column, Grid, Row, fold, grid_table, to_text
from lora_audit.render.table.inspect import layer_grid
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


def one_column(title_row: str, rows: list[Row], cells: list[str]) -> Grid:
    return Grid(name=title_row, rows=rows, columns=[Column(header="r", cells=cells)])


@pytest.mark.parametrize("color", [False, True])
def test_blocks_wider_than_the_table_fold_at_name_boundaries(color: bool) -> None:
    headers = BlockHeaders()
    grid = one_column("layer", [Row(label="  attn1_to_k", block=KOHYA_BLOCK)], ["8"])
    text = headers.expand(
        to_text(grid_table(grid, width=30, headers=headers), width=30, color=color), width=30
    )
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
    grid, _ = layer_grid(report_of(name))
    plain = to_text(grid_table(grid, width=100), width=100, color=False)
    headers = BlockHeaders()
    rendered = to_text(grid_table(grid, width=100, headers=headers), width=100, color=False)
    assert headers.expand(rendered, width=100) == plain


def test_fold() -> None:
    assert fold("a_b", 10) == ["a_b"]
    assert fold("unet_down_blocks_0_", 10) == ["unet_down_", "blocks_0_"]
    assert fold("abcdefghijklmnop", 10) == ["abcdefghij", "klmnop"]  # nowhere to break
    assert all(re.fullmatch(r"[\w.]+", piece) for piece in fold(KOHYA_BLOCK, 12))
    assert all(cell_len(piece) <= 12 for piece in fold(KOHYA_BLOCK, 12))


def test_names_with_private_use_characters_are_left_alone() -> None:
    headers = BlockHeaders()
    grid = one_column("path\ue005", [Row(label="  q\ue000proj", block="model.layers.0.")], ["8"])
    text = headers.expand(
        to_text(grid_table(grid, width=40, headers=headers), width=40, color=False), width=40
    )
    assert "path\ue005" in text and "  q\ue000proj" in text
    assert " model.layers.0." in text
