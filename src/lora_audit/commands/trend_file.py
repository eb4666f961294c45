"""Read a trend report back (``trend -f json``, or the training callback's ``trend.json``).

A training integration (:mod:`lora_audit.integrations`) audits each checkpoint in memory when
it is saved and writes ``<output_dir>/lora-audit/trend.json``: the same
:class:`~lora_audit.report.TrendReport` that ``lora-audit trend OUTPUT_DIR -f json`` gives for
the checkpoints. ``lora-audit trend FILE.json`` reads such a file back: every field is
checked against the report model (:func:`lora_audit.report.decode.from_dict`), the series
must line up with the checkpoints, and the drift is judged again with the window, rise and
``--fail-on-drift`` of this run. The measured numbers are never recomputed, so τ is the
file's: another τ is refused (audit the checkpoints again for that).
"""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

from lora_audit.commands.inspect import AuditOptions
from lora_audit.commands.trend import (
    StepOrder,
    TrendOptions,
    trend_from_series,
    window_note,
)
from lora_audit.engine.batches import Warn
from lora_audit.engine.device import EngineOptions
from lora_audit.errors import InputError, UsageError
from lora_audit.formats.config_files import parse_json, read_bounded
from lora_audit.report import TrendReport
from lora_audit.report.common import SCHEMA_VERSION
from lora_audit.report.decode import from_dict

#: What a trend file's ``settings.step_source`` and ``step_unit`` may be (the schema's enums).
STEP_SOURCES = frozenset({"name", "ss_steps", "ss_epoch", "order"})
STEP_UNITS = frozenset({"step", "epoch", "number", "order"})

_HINT = "write it again (lora-audit trend CHECKPOINTS -f json -o FILE, or the training callback)"


def is_trend_file(path: Path) -> bool:
    """Whether ``path`` is given as a trend report: a ``.json`` path that is not a directory."""
    return path.suffix.lower() == ".json" and not path.is_dir()


def read_trend_file(path: Path) -> TrendReport:
    """The trend report in ``path``, every field checked.

    Raises
    ------
    InputError
        When the file is not a regular file, not JSON, not a trend report of schema 2.x, or
        its series do not line up with its checkpoints.
    """
    where = str(path)
    data = parse_json(read_bounded(path, what="trend report"), where=where)
    if not isinstance(data, dict) or data.get("kind") != "trend":
        kind = data.get("kind") if isinstance(data, dict) else None
        raise InputError(
            f"{where}: not a trend report (kind {kind!r})",
            hint="trend reads the JSON that `lora-audit trend -f json` or the training "
            "callback (<output_dir>/lora-audit/trend.json) writes",
        )
    version = data.get("schema_version")
    major = SCHEMA_VERSION.split(".")[0]
    if not isinstance(version, str) or version.split(".")[0] != major:
        raise InputError(
            f"{where}: schema_version {version!r} is not {major}.x",
            hint="read it with the lora-audit version that wrote it, or write it again",
        )
    report = from_dict(TrendReport, data, where=where)
    _check_series(report, where=where)
    return report


def _check_series(report: TrendReport, *, where: str) -> None:
    settings, n = report.settings, len(report.checkpoints)
    problem = None
    if settings.step_source not in STEP_SOURCES or settings.step_unit not in STEP_UNITS:
        problem = f"unknown step source/unit {settings.step_source!r}/{settings.step_unit!r}"
    elif not 0 < settings.energy <= 1:
        problem = f"settings.energy {settings.energy!r} is not in (0, 1]"
    elif n < 1:
        problem = "no checkpoints"
    elif any(b.step <= a.step for a, b in pairwise(report.checkpoints)):
        problem = "the checkpoints are not in increasing step order"
    else:
        for layer in report.layers:
            lengths = {len(layer.stable_rank), len(layer.energy_rank), len(layer.frobenius_norm)}
            if lengths != {n}:
                problem = f"layer {layer.name!r} has series of {sorted(lengths)}, not {n} values"
                break
            if any(v is not None and math.isnan(v) for v in layer.stable_rank):
                problem = f"layer {layer.name!r} has a stable rank that is not a number"
                break
    if problem is not None:
        raise InputError(f"{where}: {problem}", hint=_HINT)


def retrend(
    report: TrendReport,
    *,
    window: int,
    min_rise: float,
    fail_on_drift: bool,
    energy: float | None = None,
    warn: Warn | None = None,
) -> TrendReport:
    """``report`` with its drift judged again over ``window`` and ``min_rise``.

    Parameters
    ----------
    energy
        The τ asked for (a flag or the settings file); ``None`` takes the file's.

    Raises
    ------
    UsageError
        For an ``energy`` other than the one the file's energy ranks were measured at.
    """
    settings = report.settings
    if energy is not None and not math.isclose(energy, settings.energy, rel_tol=1e-12):
        raise UsageError(
            f"the trend file measured energy ranks at τ = {settings.energy:g}, not "
            f"{energy:g}; a trend file is not measured again",
            hint="leave --energy out, or run trend on the checkpoints themselves",
        )
    options = TrendOptions(
        audit=AuditOptions(energy=settings.energy, engine=EngineOptions(device="cpu")),
        window=window,
        min_rise=min_rise,
        fail_on_drift=fail_on_drift,
    )
    n = len(report.checkpoints)
    steps = StepOrder(
        order=tuple(range(n)),
        steps=tuple(c.step for c in report.checkpoints),
        source=settings.step_source,
        unit=settings.step_unit,
    )
    stale = window_note(settings.window, n)  # the file's own note; judged again below
    again = trend_from_series(
        report.checkpoints,
        [replace(layer, drift=()) for layer in report.layers],
        steps=steps,
        options=options,
        warnings=[w for w in report.warnings if w != stale],
        warn=warn,
    )
    kept = replace(settings, window=window, min_rise=min_rise, fail_on_drift=fail_on_drift)
    return replace(again, settings=kept)
