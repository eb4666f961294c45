"""Where each layer's scale came from, in every output; ``assumed`` stands out in each."""

from __future__ import annotations

import json

from reports import inspect_report, layer_report

from lora_audit.commands.check import assemble
from lora_audit.decisions.check_rules import Policy
from lora_audit.render import OutputFormat, render
from lora_audit.report import CheckReport, InspectReport
from lora_audit.report.common import SCHEMA_VERSION


def mixed(path: str = "adapters/mixed") -> InspectReport:
    """Two layers whose alpha the file gives, one whose scale was assumed."""
    layers = [
        layer_report("model.layers.0.q_proj", rank=4, k=4, scale_source="module_alpha"),
        layer_report("model.layers.1.q_proj", rank=4, k=4, scale_source="module_alpha"),
        layer_report("model.layers.2.q_proj", rank=4, k=4, scale_source="assumed"),
    ]
    return inspect_report(path, layers, recommended_rank=4)


def known(path: str = "adapters/known") -> InspectReport:
    layers = [layer_report(f"model.layers.{i}.q_proj", rank=4, k=4) for i in range(2)]
    return inspect_report(path, layers, recommended_rank=4)


def test_table_names_the_source_and_marks_assumed_rows() -> None:
    text = render(mixed(), OutputFormat.TABLE)
    assert "scale from   assumed (1 layer), module_alpha (2 layers)" in text
    assert "ASSUMED" in text and "scale ASSUMED for 1 of 3 layers" in text
    rows = {line.split()[0]: line for line in text.splitlines() if "q_proj" in line}
    assert rows["2.q_proj"].split()[1] == "*"
    assert "*" not in rows["0.q_proj"] and "*" not in rows["1.q_proj"]
    assert max(len(line) for line in text.splitlines()) <= 100


def test_table_is_quiet_when_every_scale_is_known() -> None:
    text = render(known(), OutputFormat.TABLE)
    assert "scale from   config (2 layers)" in text
    assert "ASSUMED" not in text and " *" not in text


def test_all_assumed_says_so_in_the_title() -> None:
    layers = [layer_report("a.q", rank=2, k=1, scale_source="assumed")]
    text = render(inspect_report("x", layers, recommended_rank=2), OutputFormat.TABLE)
    assert "(ASSUMED)" in text.splitlines()[0]


def test_json_carries_the_sources() -> None:
    data = json.loads(render(mixed(), OutputFormat.JSON))
    assert [layer["scale_source"] for layer in data["layers"]] == [
        "module_alpha",
        "module_alpha",
        "assumed",
    ]
    assert data["adapter"]["scale_sources"] == {"assumed": 1, "module_alpha": 2}
    assert data["schema_version"] == SCHEMA_VERSION


def test_markdown_flags_assumed() -> None:
    text = render(mixed(), OutputFormat.MARKDOWN)
    assert "- scale from: assumed (1 layer), module_alpha (2 layers)" in text
    assert "**scale ASSUMED for 1 of 3 layers" in text
    assert "| `model.layers.2.q_proj` ⚠️ |" in text
    assert "| `model.layers.0.q_proj` |" in text
    assert "ASSUMED" not in render(known(), OutputFormat.MARKDOWN)


def check_of(*reports: InspectReport) -> CheckReport:
    return assemble(reports=reports, errors=[], policy=Policy(), policy_file=None)


def test_check_outputs_warn_about_assumed_scales() -> None:
    report = check_of(known(), mixed())
    github = render(report, OutputFormat.GITHUB).splitlines()
    warnings = [line for line in github if line.startswith("::warning")]
    assert len(warnings) == 1
    assert "file=adapters/mixed/adapter_model.safetensors" in warnings[0]
    assert "title=lora-audit scale assumed" in warnings[0]
    assert "scale ASSUMED for 1 of 3 layers" in warnings[0]
    markdown = render(report, OutputFormat.MARKDOWN)
    assert "### ⚠️ Scale assumed" in markdown and "`adapters/mixed`: **scale ASSUMED" in markdown
    assert "adapters/known`: **" not in markdown
    table = render(report, OutputFormat.TABLE)
    assert "! adapters/mixed: scale ASSUMED for 1 of 3 layers" in table
    quiet = check_of(known())
    assert "ASSUMED" not in render(quiet, OutputFormat.TABLE)
    assert "::warning" not in render(quiet, OutputFormat.GITHUB)
