"""``lora-audit check``'s run step: inspect each adapter, apply the rules, build the report.

An adapter that cannot be read or is invalid does not stop the others: its error is recorded
in the report (and handed to ``on_error``) and the exit code becomes 3. Otherwise the exit
code is 1 when any rule fires, else 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from lora_audit.commands.adapter_info import TOOL
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.decisions.check_rules import Policy, active_rules, evaluate
from lora_audit.engine.batches import Progress, Warn
from lora_audit.engine.device import EngineOptions, device_type
from lora_audit.errors import InputError
from lora_audit.report import AdapterError, CheckReport, Finding, InspectReport
from lora_audit.report.check import CheckStatus

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
    warn: Warn | None = None,
    on_error: Callable[[InputError], None] | None = None,
    progress: ProgressFactory | None = None,
) -> CheckReport:
    """Check every adapter in ``paths`` against ``policy``.

    Parameters
    ----------
    paths
        Adapter directories or ``.safetensors`` files; repeated paths are checked once.
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
    warn
        Receives warnings (adapter read problems, GPU fallback).
    on_error
        Receives each adapter's read error as it happens.
    progress
        Opens a progress callback per adapter.

    Raises
    ------
    UsageError
        When the engine options cannot be met (``--device cuda`` without a GPU).
    """
    from lora_audit.formats import load_adapter

    device_type(engine.device)  # a usage error stops the run before any adapter is read
    options = AuditOptions(
        energy=policy.energy,
        coverage=policy.coverage,
        engine=engine,
        settings_file=display_path(policy_file),
    )
    reports: list[InspectReport] = []
    errors: list[AdapterError] = []
    for path in dict.fromkeys(paths):
        try:
            adapter = load_adapter(path, alpha=alpha, input_format=input_format)
            for message in adapter.warnings:
                if warn is not None:
                    warn(message)
            if progress is None:
                reports.append(inspect_adapter(adapter, options=options, warn=warn))
                continue
            with progress(str(path), len(adapter.layers)) as advance:
                reports.append(
                    inspect_adapter(adapter, options=options, progress=advance, warn=warn)
                )
        except InputError as exc:
            errors.append(AdapterError(path=str(path), message=str(exc)))
            if on_error is not None:
                on_error(exc)
    return assemble(
        reports=reports, errors=errors, policy=policy, policy_file=display_path(policy_file)
    )


def assemble(
    *,
    reports: Sequence[InspectReport],
    errors: Sequence[AdapterError],
    policy: Policy,
    policy_file: str | None,
) -> CheckReport:
    """Apply the rules to finished inspect reports and build the check report (no I/O)."""
    findings = tuple(
        Finding(**dataclasses.asdict(v))
        for report in reports
        for v in evaluate(report, policy=policy)
    )
    status: CheckStatus = "error" if errors else "fail" if findings else "pass"
    return CheckReport(
        tool=TOOL,
        policy=policy.as_dict(),
        policy_file=policy_file,
        rules=tuple(rule.name for rule in active_rules(policy)),
        adapters=tuple(reports),
        errors=tuple(errors),
        findings=findings,
        status=status,
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
