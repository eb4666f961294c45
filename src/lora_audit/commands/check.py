"""``lora-audit check``'s run step: inspect each adapter, apply the rules, build the report.

An adapter that cannot be read or is invalid does not stop the others: its error is recorded
in the report (and handed to ``on_error``) and the exit code becomes 3. Otherwise the exit
code is 1 when any rule fires, else 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path

from lora_audit.commands.adapter_info import TOOL
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.commands.many import (
    Outcome,
    adapter_error,
    audit_all,
    discovery_note,
    error_row,
    find_adapters,
    inspect_row,
)
from lora_audit.decisions.check_rules import Policy, active_rules, evaluate
from lora_audit.decisions.serving_targets import Target, rule_names, target_violations
from lora_audit.engine.batches import Progress, Warn
from lora_audit.engine.device import EngineOptions, device_type
from lora_audit.errors import InputError
from lora_audit.formats.discovery import Found
from lora_audit.report import AdapterError, AdapterRow, CheckReport, InspectReport
from lora_audit.report.check import AdapterVerdict, CheckStatus, CheckTotals

#: Opens a progress callback for one adapter: ``(adapter path, layer count) → context``.
ProgressFactory = Callable[[str, int], AbstractContextManager[Progress | None]]


def run_check(
    paths: Sequence[Path],
    *,
    policy: Policy,
    policy_file: Path | None = None,
    engine: EngineOptions,
    alpha: float | None = None,
    input_format: str = "auto",
    include_checkpoints: bool = False,
    warn: Warn | None = None,
    on_error: Callable[[InputError], None] | None = None,
    progress: ProgressFactory | None = None,
    notice: Callable[[str], None] | None = None,
    claim: Callable[[Path], None] | None = None,
    targets: Sequence[Target] = (),
) -> CheckReport:
    """Check every adapter that ``paths`` name or hold against ``policy``.

    Parameters
    ----------
    paths
        Adapter directories or files, or directories to search for adapters
        (:mod:`lora_audit.formats.discovery`); repeated adapters are checked once.
    policy
        The merged policy.
    policy_file
        The policy file it came from, recorded in the report.
    engine
        Device and method of the spectral engine.
    alpha
        ``lora_alpha`` for adapters whose config gives none.
    input_format
        ``auto`` detects each adapter's format; a format name forces that reader.
    include_checkpoints
        Also search ``checkpoint-*`` directories.
    warn
        Receives warnings (adapter read problems, GPU fallback).
    on_error
        Receives each adapter's read error, in audit order.
    progress
        Opens a progress callback: for one adapter, over its layers; for several, one
        callback (``"N adapters"``) advanced once per adapter.
    notice
        Receives a line about what a directory search found and skipped.
    claim
        Receives each adapter found, before any is read (the CLI protects them from being
        replaced by an output).
    targets
        Servers each adapter must load and read as PEFT does (``--target``;
        :mod:`lora_audit.decisions.serving_targets`).

    Raises
    ------
    UsageError
        When the engine options cannot be met (``--device cuda`` without a GPU).
    InputError
        When a directory tree is beyond the search limits.
    """
    device_type(engine.device)  # a usage error stops the run before any adapter is read
    options = AuditOptions(
        energy=policy.energy,
        coverage=policy.coverage,
        engine=engine,
        settings_file=display_path(policy_file),
    )
    discovery = find_adapters(paths, include_checkpoints=include_checkpoints)
    for item in discovery.found:
        if claim is not None:
            claim(item.path)
    if notice is not None and (note := discovery_note(discovery)) is not None:
        notice(note)
    if len(discovery.found) == 1:
        outcomes = [_one(discovery.found[0], options, alpha, input_format, warn, progress)]
        if outcomes[0].error is not None and on_error is not None:
            on_error(outcomes[0].error)
    else:
        n = len(discovery.found)
        opened = progress(f"{n} adapters", n) if progress is not None else nullcontext()
        with opened as advance:
            outcomes = audit_all(
                discovery.found,
                options=options,
                alpha=alpha,
                input_format=input_format,
                warn=warn,
                on_error=on_error,
                progress=advance,
            )
    reports = [o.report for o in outcomes if o.report is not None]
    errors = [adapter_error(o) for o in outcomes if o.error is not None]
    report = assemble(
        reports=reports,
        errors=errors,
        policy=policy,
        policy_file=display_path(policy_file),
        targets=targets,
    )
    if len(outcomes) < 2:
        return report
    return replace(report, summary=_rows(report, outcomes))


def _one(
    item: Found,
    options: AuditOptions,
    alpha: float | None,
    input_format: str,
    warn: Warn | None,
    progress: ProgressFactory | None,
) -> Outcome:
    """One adapter, read and inspected in this thread (its warnings as they come)."""
    from lora_audit.formats import load_adapter

    if item.error is not None:
        return Outcome(path=item.path, error=item.error)
    try:
        adapter = load_adapter(item.path, alpha=alpha, input_format=input_format)
        for message in adapter.warnings:
            if warn is not None:
                warn(message)
        if progress is None:
            return Outcome(
                path=item.path, report=inspect_adapter(adapter, options=options, warn=warn)
            )
        with progress(str(item.path), len(adapter.layers)) as advance:
            report = inspect_adapter(adapter, options=options, progress=advance, warn=warn)
        return Outcome(path=item.path, report=report)
    except InputError as exc:
        return Outcome(path=item.path, error=exc)


def _rows(report: CheckReport, outcomes: Sequence[Outcome]) -> tuple[AdapterRow, ...]:
    """One row per adapter, in audit order (errors in their place)."""
    errors = iter(report.errors)
    return tuple(
        inspect_row(o.report, findings=len(report.findings_for(o.report.adapter.path)))
        if o.report is not None
        else error_row(next(errors))
        for o in outcomes
    )


def assemble(
    *,
    reports: Sequence[InspectReport],
    errors: Sequence[AdapterError],
    policy: Policy,
    policy_file: str | None,
    targets: Sequence[Target] = (),
) -> CheckReport:
    """Apply the rules (and the ``targets``' rules) to finished inspect reports and build the
    check report (no I/O)."""
    findings = tuple(
        f
        for report in reports
        for f in [*evaluate(report, policy=policy), *target_violations(report, targets)]
    )
    status: CheckStatus = "error" if errors else "fail" if findings else "pass"
    verdicts: list[AdapterVerdict] = []
    for report in reports:
        found = sum(f.adapter == report.adapter.path for f in findings)
        verdicts.append(
            AdapterVerdict(
                path=report.adapter.path, status="fail" if found else "pass", findings=found
            )
        )
    verdicts += [AdapterVerdict(path=e.path, status="unreadable", findings=0) for e in errors]
    failed = sum(v.status == "fail" for v in verdicts)
    totals = CheckTotals(
        checked=len(verdicts),
        passed=len(reports) - failed,
        failed=failed,
        unreadable=len(errors),
        findings=len(findings),
    )
    return CheckReport(
        tool=TOOL,
        policy=policy.as_dict(),
        policy_file=policy_file,
        rules=(*(rule.name for rule in active_rules(policy)), *rule_names(targets)),
        targets=tuple(str(t) for t in targets),
        adapters=tuple(reports),
        errors=tuple(errors),
        findings=findings,
        status=status,
        verdicts=tuple(verdicts),
        totals=totals,
    )


def display_path(path: Path | None) -> str | None:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    if path is None:
        return None
    absolute = path.resolve()
    try:
        return str(absolute.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(absolute)
