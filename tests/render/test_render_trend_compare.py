"""``--format markdown`` and ``--format github`` for ``trend`` and ``compare``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_audit.cli import app
from lora_audit.cli._options import CompareFormat, TrendFormat
from lora_audit.commands.compare import compare_adapters
from lora_audit.commands.trend import TrendOptions, trend_of
from lora_audit.formats import load_adapter
from lora_audit.render import OutputFormat, formats_for, render
from lora_audit.report import CompareReport, ShapeMismatch, TrendReport

SAMPLES = Path(__file__).resolve().parents[2] / "sample_adapters"
RUN = [SAMPLES / "minilm-run" / f"checkpoint-{s}" for s in (10, 20, 40, 80)]
NASTY = "x\n::error::forged|`<b>`*_[a](b)\x1b[31m\u202e"


@pytest.fixture(scope="module")
def trend() -> TrendReport:
    return trend_of([load_adapter(p) for p in RUN], options=TrendOptions())


@pytest.fixture(scope="module")
def compare() -> CompareReport:
    a, b = load_adapter(SAMPLES / "minilm-r16"), load_adapter(SAMPLES / "minilm-r4-bf16")
    return compare_adapters(a, b, top_k=4)


def test_trend_and_compare_offer_markdown_and_github() -> None:
    for kind, offered in (("trend", TrendFormat), ("compare", CompareFormat)):
        assert [f.value for f in formats_for(kind)] == [f.value for f in offered]
        assert {OutputFormat.MARKDOWN, OutputFormat.GITHUB} <= set(formats_for(kind))


def test_trend_markdown(trend: TrendReport) -> None:
    assert trend.findings, "the sample run drifts"
    text = render(trend, OutputFormat.MARKDOWN)
    lines = text.splitlines()
    assert lines[0].startswith("## 📈 lora-audit trend: DRIFT: 2 layer(s) keep rising")
    for c in trend.checkpoints:
        row = [cell.strip() for cell in _row(lines, f"`{c.path}`")]
        assert row[0] == str(c.step) and row[5] == f"{c.max_stable_rank:.2f}"
        assert row[-1] == f"{c.wasted_fraction:.1%}"
    for f in trend.findings:
        assert f"`{f.layer}` · `{f.rule}`: {f.message}" in text
    for layer in trend.layers:
        row = [cell.strip() for cell in _row(lines, f"`{layer.name}`")]
        assert row[1] == " ".join(
            {"stable_rank": "↑ sr", "energy_rank": "↑ k"}[m] for m in layer.drift
        )
        first = next(v for v in layer.stable_rank if v is not None)
        assert row[4].startswith(f"{first:.2f}")
    assert "<details><summary>Per layer (12)</summary>" in text


def _row(lines: list[str], key: str) -> list[str]:
    rows = [line.strip("| ").split(" | ") for line in lines if line.startswith("| ")]
    (row,) = [cells for cells in rows if key in cells[:2]]
    return row


def test_trend_github_is_one_annotation_per_finding(trend: TrendReport) -> None:
    lines = render(trend, OutputFormat.GITHUB).splitlines()
    assert len(lines) == len(trend.findings) + len(trend.warnings) + 1
    last = trend.checkpoints[-1].tensor_file
    assert all(line.startswith(f"::warning file={last},title=lora-audit ") for line in lines[:-1])
    assert lines[-1].startswith("::notice title=lora-audit trend::DRIFT: 2 layer(s)")
    failing = dataclasses.replace(
        trend, findings=tuple(dataclasses.replace(f, severity="error") for f in trend.findings)
    )
    assert render(failing, OutputFormat.GITHUB).startswith("::error file=")


def test_compare_markdown(compare: CompareReport) -> None:
    text = render(compare, OutputFormat.MARKDOWN)
    lines = text.splitlines()
    assert lines[0] == f"## lora-audit compare: `{compare.adapter_a.path}` vs " + (
        f"`{compare.adapter_b.path}`"
    )
    for layer in compare.layers:
        row = [cell.strip() for cell in _row(lines, f"`{layer.name}`")]
        assert row[2] == f"{layer.rank_a}/{layer.rank_b}"
        assert row[5] == f"{layer.relative_difference:.3f}"
        assert row[9] == f"{layer.right_overlap:.3f}"
    assert f"- only in A ({len(compare.summary.only_in_a)}): " in text
    assert f"cosine {compare.summary.cosine:.4f}" in text


def test_compare_github(compare: CompareReport) -> None:
    lines = render(compare, OutputFormat.GITHUB).splitlines()
    assert len(lines) == 1 and lines[0].startswith("::notice title=lora-audit compare::")
    assert f"cosine {compare.summary.cosine:.4f}" in lines[0]
    mismatch = ShapeMismatch(name="l.q", name_b=None, shape_a=(4, 4), shape_b=(4, 8))
    lines = render(
        dataclasses.replace(compare, mismatched=(mismatch,)), OutputFormat.GITHUB
    ).splitlines()
    assert lines[0].startswith(f"::warning file={compare.adapter_b.tensor_file},")
    assert "l.q is 4×4 in" in lines[0]


def _nasty_trend(trend: TrendReport) -> TrendReport:
    layers = tuple(dataclasses.replace(layer, name=NASTY + layer.name) for layer in trend.layers)
    findings = tuple(dataclasses.replace(f, layer=NASTY) for f in trend.findings)
    return dataclasses.replace(trend, layers=layers, findings=findings, warnings=(NASTY,))


def _nasty_compare(compare: CompareReport) -> CompareReport:
    layers = tuple(dataclasses.replace(x, name=NASTY + x.name) for x in compare.layers)
    adapter = dataclasses.replace(compare.adapter_a, path=NASTY)
    mismatch = ShapeMismatch(name=NASTY, name_b=None, shape_a=(4, 4), shape_b=(4, 8))
    return dataclasses.replace(
        compare, layers=layers, adapter_a=adapter, mismatched=(mismatch,), warnings=(NASTY,)
    )


@pytest.mark.parametrize("kind", ["trend", "compare"])
def test_names_from_a_file_cannot_inject(
    kind: str, trend: TrendReport, compare: CompareReport
) -> None:
    clean = trend if kind == "trend" else compare
    nasty = _nasty_trend(trend) if kind == "trend" else _nasty_compare(compare)
    github = render(nasty, OutputFormat.GITHUB)
    markdown = render(nasty, OutputFormat.MARKDOWN)
    for text in (github, markdown):
        assert "\x1b" not in text and "\u202e" not in text
        assert not any(line.startswith("::error::") for line in text.splitlines())
    assert all(
        line.startswith(("::warning ", "::notice ", "::error ")) for line in github.splitlines()
    )
    assert len(github.splitlines()) == len(render(clean, OutputFormat.GITHUB).splitlines()) + (
        1 + (kind == "compare")
    )
    assert "<b>" not in markdown and "[a](b)" not in markdown
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    forged = [line for line in table_rows if "forged" in line]
    assert len(forged) == len(nasty.layers)
    header = [line for line in table_rows if line.startswith("| layer |")][-1]
    # every row keeps its column count: no cell boundary came from a name
    assert {line.count(" | ") for line in forged} == {header.count(" | ")}


@pytest.mark.parametrize("command", ["trend", "compare"])
@pytest.mark.parametrize("fmt", ["markdown", "github"])
def test_cli_offers_the_formats(command: str, fmt: str) -> None:
    args = (
        [str(p) for p in RUN]
        if command == "trend"
        else [
            str(SAMPLES / "minilm-r16"),
            str(SAMPLES / "minilm-r4-bf16"),
        ]
    )
    result = CliRunner().invoke(app, [command, *args, "--format", fmt])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("## " if fmt == "markdown" else "::")
