"""The JUnit report validates against Jenkins' junit-10.xsd and reads back with junitparser."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from reports import lean_report, wasteful_report

from lora_audit.commands.check import assemble
from lora_audit.decisions.check_rules import Policy
from lora_audit.render import OutputFormat, render
from lora_audit.report import AdapterError, CheckReport

xmlschema = pytest.importorskip("xmlschema")
junitparser = pytest.importorskip("junitparser")

XSD = Path(__file__).parents[1] / "support" / "schemas" / "junit-10.xsd"


@pytest.fixture(scope="module")
def schema() -> object:
    return xmlschema.XMLSchema10(str(XSD))


def _report(*, errors: bool = True) -> CheckReport:
    broken = [AdapterError(path="adapters/br<o>ken\x01", message='3 bytes & "x"\x00')]
    return assemble(
        reports=[lean_report(), wasteful_report()],
        errors=broken if errors else [],
        policy=Policy(),
        policy_file="pyproject.toml",
    )


@pytest.mark.parametrize("errors", [True, False])
def test_junit_validates_against_jenkins_junit_10_xsd(schema: object, errors: bool) -> None:
    xml = render(_report(errors=errors), OutputFormat.JUNIT)
    schema.validate(xml)  # type: ignore[attr-defined]


def test_the_schema_rejects_the_old_layout(schema: object) -> None:
    """The fixture bites: ``skipped`` or ``<properties>`` on ``<testsuites>`` is invalid."""
    old = '<testsuites tests="0" skipped="0"></testsuites>'
    assert not schema.is_valid(old)  # type: ignore[attr-defined]
    props = '<testsuites><properties/><testsuite tests="0"/></testsuites>'
    assert not schema.is_valid(props)  # type: ignore[attr-defined]
    assert schema.is_valid('<testsuites><testsuite tests="0"/></testsuites>')  # type: ignore[attr-defined]


def test_xmllint_accepts_it_when_installed(tmp_path: Path) -> None:
    xmllint = shutil.which("xmllint")
    if xmllint is None:
        pytest.skip("xmllint (Debian libxml2-utils) is not installed")
    out = tmp_path / "lora-audit.xml"
    out.write_text(render(_report(), OutputFormat.JUNIT), encoding="utf-8")
    run = subprocess.run(
        [xmllint, "--noout", "--schema", str(XSD), str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_junitparser_reads_the_counts_and_the_failures(tmp_path: Path) -> None:
    report = _report()
    out = tmp_path / "lora-audit.xml"
    out.write_text(render(report, OutputFormat.JUNIT), encoding="utf-8")
    xml = junitparser.JUnitXml.fromfile(str(out))
    suites = list(xml)
    assert [s.name for s in suites] == [
        "adapters/lean",
        "adapters/wasteful",
        "adapters/br<o>ken\\x01",
    ]
    assert [(s.tests, s.failures, s.errors) for s in suites] == [(2, 0, 0), (2, 2, 0), (1, 0, 1)]
    wasteful = {case.name: case for case in suites[1]}
    assert set(wasteful) == set(report.rules)
    (failure,) = wasteful["max-waste"].result
    assert isinstance(failure, junitparser.Failure)
    assert failure.message.startswith("93.8% of the adapter's LoRA parameters")
    (error,) = next(iter(suites[2])).result
    assert isinstance(error, junitparser.Error)
    assert error.message == '3 bytes & "x"\\x00'
    policy = {p.name: p.value for p in suites[0].properties()}
    assert policy["policy.max_waste"] == "0.5"
    assert policy["policy.source"] == "from pyproject.toml"
