"""``--format jsonl``: audit any number of adapters, one line each as it finishes.

:func:`iter_lines` audits the adapters a search found a few at once
(:func:`~lora_audit.commands.many.iter_outcomes`), turns each outcome into an
:class:`~lora_audit.report.lines.AdapterLine` as soon as it is its turn, and ends with a
:class:`~lora_audit.report.lines.SummaryLine`. Nothing of an adapter is kept once its line is
handed on, so memory is that of :data:`~lora_audit.commands.many.IN_FLIGHT` adapters plus one
path per adapter found, whatever the count. ``check`` gets the same lines, with the policy's
findings per adapter and its exit code from the summary.

:func:`adapter_line` and :func:`summary_line` are the pure steps:
:func:`lora_audit.fleet.inspect_line` builds the same line on a worker of a distributed run,
and :func:`lora_audit.fleet.summary_line` reduces finished lines to the summary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from lora_audit.commands.adapter_info import TOOL
from lora_audit.commands.check import assemble
from lora_audit.commands.inspect import AuditOptions
from lora_audit.commands.many import Outcome, adapter_error, error_row, inspect_row, iter_outcomes
from lora_audit.decisions.check_rules import Policy, active_rules
from lora_audit.decisions.serving_targets import Target, rule_names
from lora_audit.engine.batches import Warn
from lora_audit.engine.device import device_type
from lora_audit.formats.discovery import Found
from lora_audit.formats.resume import EarlierLine
from lora_audit.report import Settings
from lora_audit.report.lines import (
    AdapterLine,
    AdapterStatus,
    LineCommand,
    LineTotals,
    RunStatus,
    SummaryLine,
    to_line,
)


@dataclass(frozen=True, kw_only=True)
class LineRun:
    """What every line of one run shares: the command and its options (all picklable).

    Attributes
    ----------
    command
        ``inspect`` or ``check``.
    options
        The audit options.
    policy, policy_file, targets
        ``check`` only: the merged policy, the file it came from, the serving targets.
    """

    command: LineCommand
    options: AuditOptions
    policy: Policy | None = None
    policy_file: str | None = None
    targets: tuple[Target, ...] = ()

    @property
    def settings(self) -> Settings:
        """The settings block every report of the run carries."""
        o = self.options
        return Settings(
            energy=o.energy,
            coverage=o.coverage,
            device=device_type(o.engine.device),
            method=o.engine.method,
            settings_file=o.settings_file,
        )


def adapter_line(outcome: Outcome, *, run: LineRun) -> AdapterLine:
    """One adapter's line from its outcome (no I/O)."""
    path = str(outcome.path)
    if outcome.report is None:
        error = adapter_error(outcome)
        status: AdapterStatus = "unreadable" if run.command == "check" else "error"
        return AdapterLine(
            command=run.command, path=path, status=status, row=error_row(error), report=None,
            error=error,
        )  # fmt: skip
    if run.command == "inspect" or run.policy is None:
        row = inspect_row(outcome.report)
        return AdapterLine(
            command=run.command, path=path, status="ok", row=row, report=outcome.report,
            error=None,
        )  # fmt: skip
    checked = assemble(
        reports=[outcome.report],
        errors=[],
        policy=run.policy,
        policy_file=run.policy_file,
        targets=run.targets,
    )
    findings = checked.findings
    return AdapterLine(
        command="check", path=path, status="fail" if findings else "pass",
        row=inspect_row(outcome.report, findings=len(findings)), report=outcome.report,
        error=None, findings=findings,
    )  # fmt: skip


@dataclass(kw_only=True)
class Tally:
    """Running totals of a run's adapter lines (a counter, not a report)."""

    adapters: int = 0
    unreadable: int = 0
    failed: int = 0
    findings: int = 0
    resumed: int = 0

    def add(self, status: str, findings: int = 0) -> None:
        """Count one adapter line."""
        self.adapters += 1
        self.unreadable += status in ("error", "unreadable")
        self.failed += status == "fail"
        self.findings += findings


def summary_line(tally: Tally, *, run: LineRun) -> SummaryLine:
    """The last line of a run whose adapter lines add up to ``tally`` (no I/O)."""
    read = tally.adapters - tally.unreadable
    status: RunStatus
    if run.command == "inspect":
        status = "error" if tally.unreadable else "ok"
        totals = LineTotals(adapters=tally.adapters, read=read, unreadable=tally.unreadable)
    else:
        status = "error" if tally.unreadable else "fail" if tally.findings else "pass"
        totals = LineTotals(
            adapters=tally.adapters, read=read, unreadable=tally.unreadable,
            passed=read - tally.failed, failed=tally.failed, findings=tally.findings,
        )  # fmt: skip
    policy = run.policy
    return SummaryLine(
        command=run.command,
        tool=TOOL,
        settings=run.settings,
        totals=totals,
        status=status,
        policy=None if policy is None else policy.as_dict(),
        policy_file=run.policy_file,
        rules=()
        if policy is None
        else (*(r.name for r in active_rules(policy)), *rule_names(run.targets)),
        targets=tuple(str(t) for t in run.targets),
        resumed=tally.resumed,
    )


@dataclass(kw_only=True)
class _Skip:
    done: Mapping[str, EarlierLine]
    tally: Tally = field(default_factory=Tally)

    def todo(self, found: Iterable[Found]) -> Iterator[Found]:
        for item in found:
            earlier = self.done.get(str(item.path))
            if earlier is None:
                yield item
            else:
                self.tally.add(earlier.status, earlier.findings)
                self.tally.resumed += 1


@dataclass(frozen=True, kw_only=True)
class Written:
    """One adapter's finished line, and what the summary and stderr need of it (the report
    itself is dropped once the line is made).

    Attributes
    ----------
    text
        The line (newline-terminated).
    status, findings
        For the summary's totals.
    error
        Why it could not be read, for stderr; ``None`` when it was.
    """

    text: str
    status: str
    findings: int = 0
    error: str | None = None


def finished(outcome: Outcome, *, run: LineRun) -> Written:
    """An adapter's outcome as the line to write, with what the summary and stderr need."""
    line = adapter_line(outcome, run=run)
    return Written(
        text=to_line(line),
        status=line.status,
        findings=len(line.findings),
        error=None if outcome.error is None else str(outcome.error),
    )


def iter_lines(
    found: Iterable[Found],
    *,
    run: LineRun,
    alpha: float | None = None,
    input_format: str = "auto",
    done: Mapping[str, EarlierLine] | None = None,
    warn: Warn | None = None,
    on_error: Callable[[str], None] | None = None,
) -> Iterator[Written | SummaryLine]:
    """The run's lines: one per adapter not in ``done``, in audit order, then the summary.

    Parameters
    ----------
    found
        The adapters (a search's finds, in audit order).
    run
        The command and its options.
    alpha, input_format
        As for :func:`~lora_audit.formats.load_adapter`.
    done
        Adapters of an earlier run (``--resume``), by path: skipped, but counted in the
        summary (so that it is the summary of the whole census).
    warn, on_error
        Receive each adapter's warnings and read error, in audit order.
    """
    skip = _Skip(done=done or {})
    outcomes = iter_outcomes(
        skip.todo(found), options=run.options, alpha=alpha, input_format=input_format, warn=warn
    )
    for outcome in outcomes:
        item = finished(outcome, run=run)
        del outcome  # nothing of the adapter is kept but its line
        if item.error is not None and on_error is not None:
            on_error(item.error)
        skip.tally.add(item.status, item.findings)
        yield item
    yield summary_line(skip.tally, run=run)
