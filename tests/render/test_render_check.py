"""The check renderers, against exact expected output for a small hand-built report."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from reports import lean_report, wasteful_report

from lora_audit import __version__
from lora_audit.cli._common import exit_code_for
from lora_audit.commands.check import assemble
from lora_audit.decisions.check_rules import Policy
from lora_audit.errors import ExitCode, UsageError
from lora_audit.render import RENDERERS, OutputFormat, formats_for, render
from lora_audit.render.escape import for_github_data, for_github_property
from lora_audit.render.github import command
from lora_audit.render.markdown import code, prose
from lora_audit.report import AdapterError, CheckReport
from lora_audit.report.common import SCHEMA_VERSION

BROKEN = (
    "adapters/broken/adapter_model.safetensors: file is 3 bytes, too short to be safetensors"
    " — the file is empty or truncated; download or save it again"
)


@pytest.fixture
def report() -> CheckReport:
    return assemble(
        reports=[lean_report(), wasteful_report()],
        errors=[AdapterError(path="adapters/broken", message=BROKEN)],
        policy=Policy(),
        policy_file="pyproject.toml",
    )


@pytest.fixture
def passing() -> CheckReport:
    return assemble(reports=[lean_report()], errors=[], policy=Policy(), policy_file=None)


def test_every_format_is_registered_for_check() -> None:
    assert formats_for("check") == list(OutputFormat)
    assert all(callable(RENDERERS[("check", fmt)]) for fmt in OutputFormat)


def test_status_and_exit_code_are_the_worst(report: CheckReport, passing: CheckReport) -> None:
    assert (report.status, exit_code_for(report)) == ("error", ExitCode.INPUT)
    assert (passing.status, exit_code_for(passing)) == ("pass", ExitCode.OK)
    failing = assemble(
        reports=[lean_report(), wasteful_report()], errors=[], policy=Policy(), policy_file=None
    )
    assert (failing.status, exit_code_for(failing)) == ("fail", ExitCode.FINDINGS)


def test_inspect_rejects_check_only_formats_as_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--format junit is not available for inspect") as info:
        render(lean_report(), OutputFormat.JUNIT)
    assert info.value.exit_code == ExitCode.USAGE
    assert isinstance(info.value, ValueError)  # what render() raised before


def test_json_is_the_inspect_reports_plus_findings(report: CheckReport) -> None:
    data = json.loads(render(report, OutputFormat.JSON))
    assert data["kind"] == "check" and data["schema_version"] == SCHEMA_VERSION
    assert [a["kind"] for a in data["adapters"]] == ["inspect", "inspect"]
    assert data["adapters"][1]["summary"]["wasted_fraction"] == 0.9375
    assert data["findings"][0] == {
        "adapter": "adapters/wasteful",
        "fix": "retrain at r=2, lora_alpha=2, or run "
        "`lora-audit compress adapters/wasteful -o OUT --energy 0.99`",
        "layer": None,
        "limit": 0.5,
        "measured": 0.9375,
        "message": "93.8% of the adapter's LoRA parameters lie beyond each layer's energy rank "
        "at τ=0.99 (limit 50.0%)",
        "rule": "max-waste",
        "severity": "error",
    }
    assert data["errors"] == [{"path": "adapters/broken", "message": BROKEN}]
    assert data["policy"] == {
        "energy": 0.99,
        "coverage": 0.9,
        "max_waste": 0.5,
        "max_layer_waste": 1.0,
        "min_rank_used": 1,
    }
    assert (data["policy_file"], data["rules"]) == (
        "pyproject.toml",
        ["max-waste", "min-rank-used"],
    )
    assert data["status"] == "error" and "exit_code" not in data


MARKDOWN = f"""\
## ⚠️ lora-audit check: ERROR: 3 adapters checked, 1 passed, 1 failed with 2 finding(s), 1 unreadable

Policy `energy` 0.99, `coverage` 0.9, `max-waste` 0.5, `max-layer-waste` 1, `min-rank-used` 1 \
(from pyproject.toml); rules: `max-waste`, `min-rank-used`

| adapter | status | layers | r | wasted | retrain at | findings |
| --- | --- | ---: | ---: | ---: | ---: | ---: |
| `adapters/lean` | ✅ pass | 2 | 4 | 12.5% | r=4 | 0 |
| `adapters/wasteful` | ❌ fail | 3 | 16 | 93.8% | r=2 | 2 |
| `adapters/broken` | ⚠️ unreadable |  |  |  |  |  |

### Findings

| adapter | layer | rule | measured | limit | fix |
| --- | --- | --- | --- | --- | --- |
| `adapters/wasteful` | (adapter) | `max-waste` | 0.9375 | 0.5 | retrain at r=2, lora_alpha=2, \
or run `lora-audit compress adapters/wasteful -o OUT --energy 0.99` |
| `adapters/wasteful` | `model.layers.2.q_proj` | `min-rank-used` | 0 | 1 | drop it from \
target_modules, or find out why it receives no gradient |

<details><summary>Messages</summary>

- adapters/wasteful: 93.8% of the adapter's LoRA parameters lie beyond each layer's energy rank \
at τ=0.99 (limit 50.0%)
- adapters/wasteful: layer model.layers.2.q_proj is untrained (ΔW = 0): energy rank 0, below the \
minimum 1

</details>

### Unreadable adapters

- {BROKEN}

<sub>lora-audit {__version__}</sub>
"""


def test_markdown(report: CheckReport) -> None:
    assert render(report, OutputFormat.MARKDOWN) == MARKDOWN


def test_markdown_passing(passing: CheckReport) -> None:
    assert render(passing, OutputFormat.MARKDOWN) == (
        "## ✅ lora-audit check: PASS: 1 adapter checked, 1 passed\n\n"
        "Policy `energy` 0.99, `coverage` 0.9, `max-waste` 0.5, `max-layer-waste` 1, "
        "`min-rank-used` 1 (defaults and flags); rules: `max-waste`, `min-rank-used`\n\n"
        "| adapter | status | layers | r | wasted | retrain at | findings |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |\n"
        "| `adapters/lean` | ✅ pass | 2 | 4 | 12.5% | r=4 | 0 |\n\n"
        f"<sub>lora-audit {__version__}</sub>\n"
    )


def test_markdown_cells_escape_pipes_and_code_survives_backticks() -> None:
    assert prose("a|b\nc") == "a\\|b\\\\nc"  # the newline as a visible escape
    assert prose("run `x|y` now") == "run <code>x\\|y</code> now"
    assert code("x`y") == "<code>x\\`y</code>"
    assert code("a.b_c") == "`a.b_c`"


GITHUB = f"""\
::error file=adapters/broken,title=lora-audit unreadable adapter::{BROKEN}
::error file=adapters/wasteful/adapter_model.safetensors,title=lora-audit max-waste::\
adapters/wasteful: 93.8%25 of the adapter's LoRA parameters lie beyond each layer's energy rank \
at τ=0.99 (limit 50.0%25) (fix: retrain at r=2, lora_alpha=2, or run \
`lora-audit compress adapters/wasteful -o OUT --energy 0.99`)
::error file=adapters/wasteful/adapter_model.safetensors,title=lora-audit min-rank-used::\
adapters/wasteful: layer model.layers.2.q_proj is untrained (ΔW = 0): energy rank 0, below the \
minimum 1 (fix: drop it from target_modules, or find out why it receives no gradient)
::notice title=lora-audit check::ERROR: 3 adapters checked, 1 passed, 1 failed with 2 finding(s), \
1 unreadable; policy energy=0.99, coverage=0.9, max-waste=0.5, max-layer-waste=1, \
min-rank-used=1 (from pyproject.toml)
"""


def test_github(report: CheckReport) -> None:
    assert render(report, OutputFormat.GITHUB) == GITHUB


def test_github_escaping() -> None:
    assert for_github_data("50% done\r\nnext: a,b") == "50%25 done%0D%0Anext: a,b"
    assert for_github_property("dir:a,b%\n") == "dir%3Aa%2Cb%25%0A"
    assert command("error", "x\ny", file="a,b.safetensors", title="t: 1", line=None) == (
        "::error file=a%2Cb.safetensors,title=t%3A 1::x%0Ay"
    )
    assert command("notice", "done") == "::notice::done"


def test_github_output_is_one_command_per_line(report: CheckReport) -> None:
    lines = render(report, OutputFormat.GITHUB).splitlines()
    assert len(lines) == len(report.findings) + len(report.errors) + 1
    assert all(line.startswith(("::error ", "::notice ")) for line in lines)


PROPERTIES = """\
    <properties>
      <property name="policy.energy" value="0.99" />
      <property name="policy.coverage" value="0.9" />
      <property name="policy.max_waste" value="0.5" />
      <property name="policy.max_layer_waste" value="1" />
      <property name="policy.min_rank_used" value="1" />
      <property name="policy.source" value="from pyproject.toml" />
      <property name="verdict" value="ERROR: 3 adapters checked, 1 passed, 1 failed with 2 \
finding(s), 1 unreadable" />
    </properties>
"""

JUNIT = f"""\
<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="lora-audit check" tests="5" failures="2" errors="1">
  <testsuite name="adapters/lean" tests="2" failures="0" errors="0" skipped="0">
{PROPERTIES}    <testcase classname="adapters/lean" name="max-waste" \
file="adapters/lean/adapter_model.safetensors" />
    <testcase classname="adapters/lean" name="min-rank-used" \
file="adapters/lean/adapter_model.safetensors" />
  </testsuite>
  <testsuite name="adapters/wasteful" tests="2" failures="2" errors="0" skipped="0">
{PROPERTIES}    <testcase classname="adapters/wasteful" name="max-waste" \
file="adapters/wasteful/adapter_model.safetensors">
      <failure type="max-waste" message="93.8% of the adapter's LoRA parameters lie beyond each \
layer's energy rank at τ=0.99 (limit 50.0%)">adapters/wasteful: 93.8% of the adapter's LoRA \
parameters lie beyond each layer's energy rank at τ=0.99 (limit 50.0%)
fix: retrain at r=2, lora_alpha=2, or run `lora-audit compress adapters/wasteful -o OUT --energy \
0.99`</failure>
    </testcase>
    <testcase classname="adapters/wasteful" name="min-rank-used" \
file="adapters/wasteful/adapter_model.safetensors">
      <failure type="min-rank-used" message="layer model.layers.2.q_proj is untrained (ΔW = 0): \
energy rank 0, below the minimum 1">adapters/wasteful: layer model.layers.2.q_proj is untrained \
(ΔW = 0): energy rank 0, below the minimum 1
fix: drop it from target_modules, or find out why it receives no gradient</failure>
    </testcase>
  </testsuite>
  <testsuite name="adapters/broken" tests="1" failures="0" errors="1" skipped="0">
{PROPERTIES}    <testcase classname="adapters/broken" name="read">
      <error type="InputError" message="{BROKEN}">{BROKEN}</error>
    </testcase>
  </testsuite>
</testsuites>
"""


def test_junit_exact(report: CheckReport) -> None:
    assert render(report, OutputFormat.JUNIT) == JUNIT


def test_junit_parses_with_a_standard_parser(report: CheckReport) -> None:
    root = ET.fromstring(render(report, OutputFormat.JUNIT).encode("utf-8"))
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [
        "adapters/lean",
        "adapters/wasteful",
        "adapters/broken",
    ]
    cases = root.findall("./testsuite/testcase")
    # one test case per adapter and rule, plus one "read" case for the unreadable adapter
    assert len(cases) == 2 * len(report.rules) + 1 == int(root.get("tests", "0"))
    assert len(root.findall(".//failure")) == 2 == int(root.get("failures", "0"))
    assert len(root.findall(".//error")) == 1 == int(root.get("errors", "0"))
    for suite in suites:
        assert int(suite.get("tests", "0")) == len(suite.findall("testcase"))
        assert int(suite.get("failures", "0")) == len(suite.findall(".//failure"))


def test_junit_survives_control_characters_and_markup() -> None:
    error = AdapterError(path="a<&>\x01", message='bad\x00 <x> & "q"')
    nasty = assemble(reports=[], errors=[error], policy=Policy(), policy_file=None)
    root = ET.fromstring(render(nasty, OutputFormat.JUNIT))
    element = root.find(".//error")
    assert element is not None and element.get("message") == 'bad\\x00 <x> & "q"'
    assert root.find("testsuite") is not None


def test_table(report: CheckReport) -> None:
    text = render(report, OutputFormat.TABLE, width=100)
    assert "\x1b[" not in text
    assert max(len(line) for line in text.splitlines()) <= 100
    rows = [line.split() for line in text.splitlines()]
    assert ["adapters/lean", "pass", "2", "4", "12.5%", "r=4", "0"] in rows
    assert ["adapters/wasteful", "fail", "3", "16", "93.8%", "r=2", "2"] in rows
    assert ["adapters/broken", "unreadable"] in rows
    assert "✗ adapters/wasteful · max-waste · measured 0.9375, limit 0.5" in text
    assert (
        "✗ adapters/wasteful · model.layers.2.q_proj · min-rank-used · measured 0, limit 1" in text
    )
    assert "fix: retrain at r=2, lora_alpha=2" in text
    assert "policy file  pyproject.toml" in text
    assert "rules        max-waste, min-rank-used" in text
    assert text.rstrip().endswith(
        "ERROR: 3 adapters checked, 1 passed, 1 failed with 2 finding(s), 1 unreadable"
    )


def test_table_passing(passing: CheckReport) -> None:
    text = render(passing, OutputFormat.TABLE, width=100)
    assert "findings" in text  # the column
    assert "✗" not in text
    assert text.rstrip().endswith("PASS: 1 adapter checked, 1 passed")
    assert "policy file  none (defaults and flags)" in text


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_output_is_deterministic(report: CheckReport, fmt: OutputFormat) -> None:
    assert render(report, fmt) == render(report, fmt)


def test_inspect_markdown() -> None:
    text = render(wasteful_report(), OutputFormat.MARKDOWN)
    assert text.startswith("## lora-audit inspect: `adapters/wasteful`\n")
    assert "| `model.layers.2.q_proj` | 8×8 | 16 | 0 | 0 | 0.00 | 0.00 | 0 | 16 |" in text
    assert "- untrained: `model.layers.2.q_proj`" in text
