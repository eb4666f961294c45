"""Several adapters in one run: find them, audit them side by side, one summary row each.

The adapters are audited by a few threads at once, in the order the search found them; each
thread gets a share of the CPU cores for the engine's own pool
(:func:`~lora_audit.engine.host_buffers.cpu_share`), so the threads together never outnumber
the cores, and BLAS stays single-threaded meanwhile. At most :data:`IN_FLIGHT` adapters are
held at once (one group of equal-shape layers each, as for one adapter); on a GPU, one at a
time. Warnings are buffered per adapter and handed on in audit order, so the output does not
depend on which thread finished first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from lora_audit.commands.adapter_info import TOOL
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.decisions.retrain_advice import retrain_verdict
from lora_audit.engine.batches import Progress, Warn
from lora_audit.engine.device import device_type
from lora_audit.engine.host_buffers import cpu_cores, cpu_share, single_threaded_blas
from lora_audit.errors import InputError
from lora_audit.formats.discovery import Discovery, Found, discover
from lora_audit.report import AdapterError, AdapterRow, InspectManyReport, InspectReport, Settings

#: Most adapters audited (and held in memory) at once.
IN_FLIGHT = 4


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One adapter's result: its report, or why it could not be read."""

    path: Path
    report: InspectReport | None = None
    error: InputError | None = None


def find_adapters(
    paths: Sequence[Path], *, include_checkpoints: bool = False, streamed: bool = False
) -> Discovery:
    """Every adapter ``paths`` name or hold (see :mod:`lora_audit.formats.discovery`)."""
    return discover(paths, include_checkpoints=include_checkpoints, streamed=streamed)


def discovery_note(discovery: Discovery) -> str | None:
    """One line for stderr about what a directory search found and skipped; ``None`` when
    every path named one adapter, or when nothing readable was found (then each path's
    error says why, and what was skipped)."""
    n = len(discovery.found)
    skipped = discovery.skipped_checkpoints or discovery.skipped_files
    readable = any(item.error is None for item in discovery.found)
    if not discovery.searched or not readable or (n == 1 and not skipped):
        return None
    parts = [f"found {n} adapter{'s' if n != 1 else ''}"]
    if discovery.skipped_checkpoints:
        k = discovery.skipped_checkpoints
        parts.append(
            f"skipped {k} checkpoint-* director{'ies' if k != 1 else 'y'} "
            "(--include-checkpoints audits them)"
        )
    if discovery.skipped_files:
        k = discovery.skipped_files
        parts.append(f"skipped {k} .safetensors file{'s' if k != 1 else ''} without LoRA factors")
    return "; ".join(parts)


def audit_all(
    found: Sequence[Found],
    *,
    options: AuditOptions,
    alpha: float | None = None,
    input_format: str = "auto",
    warn: Warn | None = None,
    on_error: Callable[[InputError], None] | None = None,
    progress: Progress | None = None,
) -> list[Outcome]:
    """Inspect every adapter in ``found``, a few at once; the outcomes in the same order.

    Parameters
    ----------
    found
        The adapters, from :func:`find_adapters`.
    options
        Energy, coverage and engine options, the same for every adapter.
    alpha, input_format
        As for :func:`~lora_audit.formats.load_adapter`.
    warn
        Receives each adapter's warnings (reader and engine), in audit order.
    on_error
        Receives the error of each adapter that could not be read, in audit order.
    progress
        Advanced by one as each adapter is done.

    Raises
    ------
    UsageError
        When the engine options cannot be met (``--device cuda`` without a GPU), before any
        adapter is read.
    """
    outcomes: list[Outcome] = []
    for outcome in iter_outcomes(
        found, options=options, alpha=alpha, input_format=input_format, warn=warn
    ):
        if outcome.error is not None and on_error is not None:
            on_error(outcome.error)
        outcomes.append(outcome)
        if progress is not None:
            progress(1)
    return outcomes


def iter_outcomes(
    found: Iterable[Found],
    *,
    options: AuditOptions,
    alpha: float | None = None,
    input_format: str = "auto",
    warn: Warn | None = None,
) -> Iterator[Outcome]:
    """:func:`audit_all` one outcome at a time, in order, with at most a few reports held.

    The caller drops each outcome before asking for the next, so memory stays that of
    :data:`IN_FLIGHT` adapters whatever the count (``--format jsonl``). Warnings reach
    ``warn`` in audit order.
    """
    device = device_type(options.engine.device)
    cores = cpu_cores()
    count = len(found) if isinstance(found, Sized) else IN_FLIGHT
    workers = 1 if device == "cuda" else max(1, min(count, cores, IN_FLIGHT))
    share = max(1, cores // workers)

    def one(item: Found) -> tuple[Outcome, list[str]]:
        messages: list[str] = []
        with cpu_share(share):
            outcome = audit_one(item, options=options, alpha=alpha, fmt=input_format, warn=messages)
        return outcome, messages

    blas = single_threaded_blas() if workers > 1 else nullcontext()
    with blas, ThreadPoolExecutor(max_workers=workers) as pool:
        for outcome, messages in _ordered(pool, one, found, window=workers * 2):
            for message in messages:
                if warn is not None:
                    warn(message)
            yield outcome


def _ordered(
    pool: ThreadPoolExecutor,
    fn: Callable[[Found], tuple[Outcome, list[str]]],
    items: Iterable[Found],
    *,
    window: int,
) -> Iterator[tuple[Outcome, list[str]]]:
    """``map(fn, items)`` on ``pool``, in order, with at most ``window`` results pending (so
    that finished reports wait in memory only for the slowest one before them)."""
    pending = []
    queue = iter(items)
    for item in queue:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    while pending:
        yield pending.pop(0).result()


def audit_one(
    item: Found, *, options: AuditOptions, alpha: float | None, fmt: str, warn: list[str]
) -> Outcome:
    """Read and inspect one adapter in this thread; its warnings appended to ``warn``."""
    from lora_audit.formats import load_adapter

    if item.error is not None:
        return Outcome(path=item.path, error=item.error)
    try:
        adapter = load_adapter(item.path, alpha=alpha, input_format=fmt)
        warn.extend(adapter.warnings)
        report = inspect_adapter(adapter, options=options, warn=warn.append)
    except InputError as exc:
        return Outcome(path=item.path, error=exc)
    return Outcome(path=item.path, report=report)


def adapter_error(outcome: Outcome) -> AdapterError:
    """The report's record of an adapter that could not be read."""
    return AdapterError(path=str(outcome.path), message=str(outcome.error))


def inspect_row(report: InspectReport, *, findings: int | None = None) -> AdapterRow:
    """An adapter's summary row; with ``findings`` (``check``) its verdict is pass or fail."""
    s = report.summary
    return AdapterRow(
        path=report.adapter.path,
        format=report.adapter.format,
        layer_count=s.layer_count,
        nominal_rank=s.nominal_rank,
        recommended_rank=s.recommended_rank,
        wasted_fraction=s.wasted_fraction,
        mean_stable_rank=s.mean_stable_rank,
        max_stable_rank=s.max_stable_rank,
        findings=findings,
        verdict=(
            (
                s.advice_verdict
                or retrain_verdict(
                    keep_structure=s.keep_structure,
                    rank=s.recommended_rank,
                    nominal=s.nominal_rank,
                    patterned=bool(s.rank_pattern),
                )
            )
            if findings is None
            else "fail"
            if findings
            else "pass"
        ),
    )


def error_row(error: AdapterError) -> AdapterRow:
    """The summary row of an adapter that could not be read."""
    return AdapterRow(
        path=error.path,
        format=None,
        layer_count=None,
        nominal_rank=None,
        recommended_rank=None,
        wasted_fraction=None,
        mean_stable_rank=None,
        max_stable_rank=None,
        findings=None,
        verdict="error",
        message=error.message,
    )


def inspect_many(outcomes: Sequence[Outcome], *, options: AuditOptions) -> InspectManyReport:
    """The ``inspect-many`` report of finished outcomes (no I/O)."""
    rows: list[AdapterRow] = []
    reports: list[InspectReport] = []
    errors: list[AdapterError] = []
    for outcome in outcomes:
        if outcome.report is not None:
            reports.append(outcome.report)
            rows.append(inspect_row(outcome.report))
        else:
            errors.append(adapter_error(outcome))
            rows.append(error_row(errors[-1]))
    return InspectManyReport(
        tool=TOOL,
        settings=Settings(
            energy=options.energy,
            coverage=options.coverage,
            device=device_type(options.engine.device),
            method=options.engine.method,
            settings_file=options.settings_file,
        ),
        adapters=tuple(reports),
        errors=tuple(errors),
        summary=tuple(rows),
        status="error" if errors else "ok",
    )
