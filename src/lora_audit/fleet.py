"""A census beyond one machine: what a distributed engine ships to its workers.

``lora-audit inspect DIR --format jsonl`` audits a folder on one machine. For a whole hub
mirror, hand the adapters to an existing engine (Dask, Ray, Spark) instead, with these three
functions (``docs/fleet.md`` has the Dask recipe)::

    paths = adapter_paths("/mirror")  # on the client: the CLI's search, in its order
    lines = [inspect_line(p) for p in paths]  # on the workers: one JSON line each
    summary = summary_line(lines)  # anywhere: the reduction

Each takes and returns plain strings (picklable, small: a line is the adapter's report, about
15 kB for a 36-layer adapter) and keeps no state between calls, so a task can run on any
worker, be retried, or be run twice. The lines are exactly the ones ``--format jsonl`` writes
for the same adapters with the same options (``report/schema/jsonl.schema.json``); an adapter
that cannot be read gives its error line rather than failing the task.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lora_audit.choices import DeviceName as Device
from lora_audit.choices import InputFormatName as InputFormat
from lora_audit.choices import MethodName as Method
from lora_audit.choices import input_format_name

if TYPE_CHECKING:
    from lora_audit.commands.stream import LineRun

PathLike = str | os.PathLike[str]


def adapter_paths(*paths: PathLike, include_checkpoints: bool = False) -> list[str]:
    """Every adapter the paths name or hold, in the order ``lora-audit inspect`` audits them.

    Raises
    ------
    InputError
        When a directory tree is beyond the search limits (those of a streamed run: a
        million adapters).
    """
    from lora_audit.commands.many import find_adapters

    found = find_adapters(
        [Path(p) for p in paths], include_checkpoints=include_checkpoints, streamed=True
    )
    return [str(item.path) for item in found.found]


def inspect_line(
    path: PathLike,
    *,
    energy: float = 0.99,
    coverage: float | None = None,
    device: Device = "auto",
    method: Method = "auto",
    alpha: float | None = None,
    input_format: InputFormat = "auto",
) -> str:
    """The ``--format jsonl`` line of one adapter: its report, or why it could not be read.

    The options are those of :func:`lora_audit.inspect`. The work is that of one adapter: its
    factors one layer at a time (memory about the largest layer upcast, plus its report).

    Raises
    ------
    UsageError
        For an option out of range (an unreadable adapter is a line, not an exception).
    """
    from lora_audit.api import _warn
    from lora_audit.commands.many import Outcome, audit_one
    from lora_audit.commands.stream import adapter_line
    from lora_audit.formats.discovery import Found
    from lora_audit.report.lines import to_line

    run = _run(energy=energy, coverage=coverage, device=device, method=method)
    item = Found(path=Path(path))
    messages: list[str] = []
    outcome: Outcome = audit_one(
        item, options=run.options, alpha=alpha, fmt=input_format_name(input_format), warn=messages
    )
    for message in messages:  # also kept in the report
        _warn(message)
    return to_line(adapter_line(outcome, run=run))


def summary_line(
    lines: Iterable[str],
    *,
    energy: float = 0.99,
    coverage: float | None = None,
    device: Device = "auto",
    method: Method = "auto",
) -> str:
    """The summary line of finished adapter lines (summary lines among them are skipped).

    ``lines`` may be any iterable, e.g. a generator over the files the workers wrote: only
    each line's ``status`` is kept. The options must be those the lines were made with.
    """
    from lora_audit.commands.stream import Tally
    from lora_audit.commands.stream import summary_line as build
    from lora_audit.report.lines import to_line

    tally = Tally()
    for text in lines:
        line = json.loads(text)
        if line.get("kind") == "adapter":
            tally.add(str(line["status"]), len(line.get("findings") or ()))
    run = _run(energy=energy, coverage=coverage, device=device, method=method)
    return to_line(build(tally, run=run))


def _run(*, energy: float, coverage: float | None, device: Device, method: Method) -> LineRun:
    from lora_audit.api import _audit_options
    from lora_audit.commands.stream import LineRun

    options = _audit_options(energy=energy, coverage=coverage, device=device, method=method)
    return LineRun(command="inspect", options=options)
