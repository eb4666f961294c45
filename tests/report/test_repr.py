"""A report's ``repr`` is a one-line summary for a notebook, not every layer's fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from check_adapters import write_lean
from factories import FakeAdapter, FakeLayer, planted_factors, write_peft

import lora_audit
from lora_audit.report import InspectReport

LAYERS = 40


def _wasteful(directory: Path) -> Path:
    """r=16 in 40 layers, each using 2 directions at τ=0.99 (87.5% wasted)."""
    layers = [
        FakeLayer(
            f"model.layers.{i}.q_proj",
            *planted_factors(out=32, inp=24, rank=16, spectrum=np.array([5.0, 1]), seed=i),
        )
        for i in range(LAYERS)
    ]
    return write_peft(directory, FakeAdapter(layers))


@pytest.fixture(scope="module")
def wasteful(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _wasteful(tmp_path_factory.mktemp("repr") / "wasteful")


@pytest.fixture(scope="module")
def report(wasteful: Path) -> InspectReport:
    return lora_audit.inspect(wasteful, device="cpu")


def test_inspect_repr_is_short_and_says_the_key_facts(report: InspectReport) -> None:
    text = repr(report)
    assert len(text) < 300, text
    assert "\n" not in text and text.startswith("InspectReport(")
    assert f"adapter={str(report.adapter.path)!r}" in text
    assert f"layers={LAYERS}" in text and "r=16" in text and "format='peft'" in text
    assert f"stable rank mean {report.summary.mean_stable_rank:.2f}" in text
    assert "wasted 87.5%" in text
    assert f"advised r={report.summary.recommended_rank}" in text
    # the dataclass repr it replaces printed every layer
    assert len(str([repr(layer) for layer in report.layers])) > 20 * len(text)


def test_the_repr_leaves_the_json_form_alone(report: InspectReport) -> None:
    assert list(report.to_dict()) == [f.name for f in dataclasses.fields(report)]
    assert report.to_dict()["layers"][0]["name"] == "model.layers.0.q_proj"


def test_a_long_path_is_shown_by_its_tail(tmp_path: Path) -> None:
    deep = write_lean(tmp_path / ("a" * 120) / ("b" * 120) / "lean")
    text = repr(lora_audit.inspect(deep, device="cpu"))
    assert len(text) < 300, text
    assert "adapter='…" in text and "/lean'" in text


def test_every_command_s_report_has_a_short_repr(wasteful: Path, tmp_path: Path) -> None:
    lean = write_lean(tmp_path / "lean")
    check = lora_audit.check([lean, wasteful], device="cpu")
    plan = lora_audit.compress(wasteful, energy=0.99, dry_run=True, device="cpu")
    many = lora_audit.inspect_many([lean, wasteful], device="cpu")
    texts = {repr(check), repr(plan), repr(many)}
    assert all(len(t) < 300 and "\n" not in t for t in texts), texts
    assert repr(check).startswith("CheckReport(status='fail', adapters=2")
    assert f"findings={len(check.findings)}" in repr(check) and check.findings
    assert repr(plan).startswith(f"CompressReport(adapter={str(wasteful)!r}, energy=0.99")
    assert f"layers={LAYERS}" in repr(plan) and "dry_run=True" in repr(plan)
    assert f"saved {plan.summary.saved_fraction:.1%}" in repr(plan)
    assert repr(many) == "InspectManyReport(status='ok', adapters=2, unreadable=0, energy=0.99)"


def test_ipython_shows_the_same_line(report: InspectReport) -> None:
    class Printer:
        def __init__(self) -> None:
            self.written: list[str] = []

        def text(self, text: str) -> None:
            self.written.append(text)

    printer = Printer()
    report._repr_pretty_(printer, False)
    assert printer.written == [repr(report)]


def test_compare_and_merge_reports_have_a_short_repr(wasteful: Path, tmp_path: Path) -> None:
    from lora_audit.commands.compare import compare_adapters
    from lora_audit.commands.merge import MergeOptions, merge_adapters
    from lora_audit.formats import load_adapter

    lean = load_adapter(write_lean(tmp_path / "lean"))
    compared = compare_adapters(lean, load_adapter(wasteful), top_k=2)
    text = repr(compared)
    assert len(text) < 300 and text.startswith("CompareReport(a='"), text
    assert "matched=2" in text and "cosine " in text
    other = load_adapter(write_lean(tmp_path / "other"))
    options = MergeOptions(rule=None, output=None, dry_run=True)
    merged = repr(merge_adapters([lean, other], options=options))
    assert len(merged) < 300, merged
    assert merged.startswith("MergeReport(inputs=2, output=None, dry_run=True, layers=2"), merged
