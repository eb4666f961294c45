"""JUnit XML for CI test reporters: one test suite per adapter, one test case per rule.

Layout (the common "Jenkins" dialect that GitLab, Jenkins, Azure and the GitHub test-report
actions read; it validates against Jenkins' ``junit-10.xsd``, where ``<testsuites>`` holds
only ``<testsuite>`` elements and has no ``skipped`` attribute, so the policy goes into each
suite's ``<properties>``)::

    <testsuites name="lora-audit check" tests=… failures=… errors=…>
      <testsuite name="ADAPTER" tests=… failures=… errors=… skipped="0">
        <properties><property name="policy.max_waste" value="0.5"/>…</properties>
        <testcase classname="ADAPTER" name="max-waste" file="…"/>            passed
        <testcase classname="ADAPTER" name="min-rank-used">
          <failure type="min-rank-used" message="2 finding(s)">one line each</failure>
        </testcase>
      </testsuite>
      <testsuite name="BROKEN" tests="1" errors="1">
        <properties>…</properties>
        <testcase classname="BROKEN" name="read"><error type="InputError" message="…"/>
      </testsuite>
    </testsuites>

Built with :mod:`xml.etree.ElementTree`, so any standard parser reads it; every value passes
through :func:`~lora_audit.render.escape.for_xml` first (no character XML 1.0 forbids).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from lora_audit.render._text import finding_text, number, policy_source, verdict
from lora_audit.render.escape import escaped_report, for_xml
from lora_audit.report import CheckReport, Finding


def _counts(element: ET.Element, *, tests: int, failures: int, errors: int) -> None:
    element.set("tests", str(tests))
    element.set("failures", str(failures))
    element.set("errors", str(errors))
    if element.tag == "testsuite":  # junit-10.xsd allows ``skipped`` on a suite only
        element.set("skipped", "0")


def _sub(parent: ET.Element, tag: str, attrs: dict[str, str]) -> ET.Element:
    return ET.SubElement(parent, tag, {k: for_xml(v) for k, v in attrs.items()})


@escaped_report(for_xml)
def render_check(report: CheckReport, *, width: int = 100, color: bool = False) -> str:
    """The check report as JUnit XML; ``width`` and ``color`` are ignored."""
    del width, color
    root = ET.Element("testsuites", {"name": "lora-audit check"})
    total = failures = errors = 0
    for adapter in report.adapters:
        path = adapter.adapter.path
        suite = _suite(root, report, path)
        found = report.findings_for(path)
        failed = 0
        for rule in report.rules:
            attrs = {"classname": path, "name": rule, "file": adapter.adapter.tensor_file}
            case = _sub(suite, "testcase", attrs)
            broken = [f for f in found if f.rule == rule]
            if broken:
                failed += 1
                failure = _sub(case, "failure", {"type": rule, "message": _summary(broken)})
                failure.text = "\n".join(
                    f"{for_xml(finding_text(f))}\nfix: {for_xml(f.fix)}" for f in broken
                )
        _counts(suite, tests=len(report.rules), failures=failed, errors=0)
        total += len(report.rules)
        failures += failed
    for error in report.errors:
        suite = _suite(root, report, error.path)
        case = _sub(suite, "testcase", {"classname": error.path, "name": "read"})
        element = _sub(case, "error", {"type": "InputError", "message": error.message})
        element.text = for_xml(error.message)
        _counts(suite, tests=1, failures=0, errors=1)
        total += 1
        errors += 1
    _counts(root, tests=total, failures=failures, errors=errors)
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


def _suite(root: ET.Element, report: CheckReport, path: str) -> ET.Element:
    """A ``<testsuite>`` for one adapter, opening with the policy as ``<properties>``."""
    suite = _sub(root, "testsuite", {"name": path})
    properties = ET.SubElement(suite, "properties")
    for key, value in report.policy.items():
        _sub(properties, "property", {"name": f"policy.{key}", "value": number(value)})
    _sub(properties, "property", {"name": "policy.source", "value": policy_source(report)})
    _sub(properties, "property", {"name": "verdict", "value": verdict(report)})
    return suite


def _summary(findings: list[Finding]) -> str:
    first = findings[0]
    text = f"layer {first.layer} {first.message}" if first.layer else first.message
    return text if len(findings) == 1 else f"{len(findings)} findings; first: {text}"
