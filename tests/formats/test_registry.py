"""The format registry: one vocabulary across the readers, the writers, the CLI, the API and
the docs; its detection order; its post-condition run after any reader."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import get_args, get_type_hints

import pytest
from typer.testing import CliRunner
from writers import xlabs_file

import lora_audit.api
from lora_audit.adapter import Adapter
from lora_audit.choices import AdapterFormat, InputFormat, InputFormatName
from lora_audit.cli import app
from lora_audit.errors import InputError
from lora_audit.formats import INPUT_FORMATS, load_adapter, registry
from lora_audit.formats.protocols import Probe
from lora_audit.formats.readers import XlabsReader

DOCS = Path(__file__).resolve().parents[2] / "docs" / "formats.md"
_ROW = re.compile(
    r"^\| `(?P<fmt>[a-z-]+)` \| (?P<reader>[^|]+) \| (?P<choice>[^|]+) \| (?P<writer>[^|]+) \|$"
)


def _first_name(cell: str) -> str | None:
    """The first backticked name of a docs cell; ``None`` for a dash."""
    found = re.match(r"\s*`([A-Za-z-]+)`", cell)
    return found.group(1) if found else None


def _docs_rows() -> dict[str, tuple[str | None, str | None, str | None]]:
    section = DOCS.read_text(encoding="utf-8").split("## Format names and the detection order")[1]
    rows = {}
    for line in section.split("\n## ")[0].splitlines():
        if (m := _ROW.match(line)) and m["reader"].strip() != "read by":  # not the header
            rows[m["fmt"]] = (
                _first_name(m["reader"]),
                _first_name(m["choice"]),
                _first_name(m["writer"]),
            )
    return rows


def _docs_order() -> list[str]:
    section = DOCS.read_text(encoding="utf-8").split("## Format names and the detection order")[1]
    return re.findall(r"^\d+\. `(\w+)`", section.split("\n## ")[0], flags=re.MULTILINE)


def _readers_of(fmt: AdapterFormat) -> set[str]:
    return {type(r).__name__ for r in registry.READERS if fmt in r.formats}


def _writers_of(fmt: AdapterFormat) -> list[str]:
    return [type(w).__name__ for w in registry.WRITERS if fmt in w.formats]


def test_every_format_has_one_reader_and_one_writer_except_merge_s_sum() -> None:
    for fmt in AdapterFormat:
        expected = 0 if fmt is AdapterFormat.MERGED else 1
        assert len(_readers_of(fmt)) == expected, fmt
        assert len(_writers_of(fmt)) == expected, fmt
    with pytest.raises(LookupError, match="merged"):
        registry.writer_for(AdapterFormat.MERGED)


def test_the_docs_table_is_the_registry() -> None:
    rows = _docs_rows()
    assert set(rows) == {fmt.value for fmt in AdapterFormat}
    for fmt in AdapterFormat:
        reader, choice, writer = rows[fmt.value]
        readers = [r for r in registry.READERS if fmt in r.formats]
        assert {reader} == (_readers_of(fmt) or {None}), fmt
        assert {choice} == ({r.choice for r in readers} or {None}), fmt
        assert writer == (_writers_of(fmt) or [None])[0], fmt


def test_the_docs_list_is_the_detection_order() -> None:
    assert _docs_order() == [type(r).__name__ for r in registry.READERS]


def test_the_readers_choices_are_the_cli_s_and_the_api_s() -> None:
    forced = {r.choice for r in registry.READERS} - {None}
    assert forced | {InputFormat.AUTO} == set(InputFormat)
    assert [m.value for m in InputFormat] == list(get_args(InputFormatName)) == list(INPUT_FORMATS)
    runner = CliRunner()
    for name in ("inspect", "check", "compress", "merge", "trend", "compare"):
        shown = runner.invoke(app, [name, "--help"], terminal_width=200).output
        (choices,) = re.findall(r"--input-format\s+\[([a-z|]+)\]", shown)
        assert choices.split("|") == list(INPUT_FORMATS), name
    for function in (lora_audit.api.inspect, lora_audit.api.check, lora_audit.api.compress):
        hint = get_type_hints(function)["input_format"]
        assert get_args(hint) == INPUT_FORMATS, function.__name__


def test_a_forced_family_reaches_only_its_readers(tmp_path: Path) -> None:
    path = xlabs_file(tmp_path)
    probe = registry.probe(path=path, tensor_file=path, config_file=None)
    assert isinstance(registry.reader_for(probe), XlabsReader)
    for forced, reader in (("kohya", "XlabsReader"), ("peft", "PeftReader"), ("mlx", "MlxReader")):
        chosen = registry.reader_for(dataclasses.replace(probe, forced=InputFormat(forced)))
        assert type(chosen).__name__ == reader
    adapter = load_adapter(path)
    assert adapter.format is AdapterFormat.XLABS and adapter.format == "xlabs"


class _Drops:
    """A reader that claims every file and leaves out its first layer."""

    formats = frozenset({AdapterFormat.XLABS})
    choice = None

    def claims(self, probe: Probe) -> bool:
        return True

    def refusal(self, probe: Probe) -> InputError | None:
        return None

    def read(self, probe: Probe) -> Adapter:
        adapter = XlabsReader().read(probe)
        return dataclasses.replace(adapter, layers=adapter.layers[1:])


def test_the_unread_tensor_rule_runs_after_any_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = xlabs_file(tmp_path)
    dropped = load_adapter(path).layers[0]
    monkeypatch.setattr(registry, "READERS", (_Drops(),))
    with pytest.raises(InputError, match=re.escape(dropped.a_key)):
        load_adapter(path)
