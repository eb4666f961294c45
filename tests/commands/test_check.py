"""``run_check``: every adapter is inspected and judged; an unreadable one stops no other."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import pytest
from check_adapters import write_lean, write_unreadable, write_untrained, write_wasteful

from lora_audit.cli._common import exit_code_for
from lora_audit.commands.check import run_check
from lora_audit.decisions.check_rules import Policy
from lora_audit.engine.device import EngineOptions
from lora_audit.errors import ExitCode, InputError

CPU = EngineOptions(device="cpu")


def test_lean_passes_wasteful_fails(tmp_path: Path) -> None:
    lean, wasteful = write_lean(tmp_path / "lean"), write_wasteful(tmp_path / "wasteful")
    report = run_check([lean, wasteful], policy=Policy(), engine=CPU)
    assert [a.adapter.path for a in report.adapters] == [str(lean), str(wasteful)]
    assert [(f.adapter, f.rule) for f in report.findings] == [(str(wasteful), "max-waste")]
    assert report.findings[0].measured == pytest.approx(0.875)
    assert (report.status, exit_code_for(report)) == ("fail", ExitCode.FINDINGS)
    assert report.adapters[0].settings.energy == 0.99


def test_policy_energy_and_coverage_reach_the_inspection(tmp_path: Path) -> None:
    lean = write_lean(tmp_path / "lean")
    report = run_check([lean], policy=Policy(energy=0.5, coverage=0.5), engine=CPU)
    settings = report.adapters[0].settings
    assert (settings.energy, settings.coverage) == (0.5, 0.5)
    # at τ=0.5 one or two of the four singular values suffice: the lean adapter now wastes
    assert report.findings and report.findings[0].rule == "max-waste"


def test_untrained_layer(tmp_path: Path) -> None:
    report = run_check([write_untrained(tmp_path / "u")], policy=Policy(), engine=CPU)
    assert [(f.rule, f.layer) for f in report.findings] == [
        ("min-rank-used", "model.layers.1.q_proj")
    ]


def test_unreadable_is_recorded_and_the_rest_still_checked(tmp_path: Path) -> None:
    broken = write_unreadable(tmp_path / "broken")
    lean = write_lean(tmp_path / "lean")
    seen: list[InputError] = []
    opened: list[tuple[str, int]] = []

    def progress(path: str, layers: int) -> nullcontext[None]:
        opened.append((path, layers))
        return nullcontext()

    report = run_check(
        [broken, lean, lean], policy=Policy(), engine=CPU, on_error=seen.append, progress=progress
    )
    assert [e.path for e in report.errors] == [str(broken)]
    assert report.errors[0].message == str(seen[0])
    assert [a.adapter.path for a in report.adapters] == [str(lean)], "repeats are checked once"
    assert opened == [(str(lean), 2)]
    assert (report.status, exit_code_for(report)) == ("error", ExitCode.INPUT)


def test_errors_outrank_findings(tmp_path: Path) -> None:
    report = run_check(
        [write_wasteful(tmp_path / "w"), tmp_path / "missing"], policy=Policy(), engine=CPU
    )
    assert report.findings and report.errors
    assert exit_code_for(report) == ExitCode.INPUT
