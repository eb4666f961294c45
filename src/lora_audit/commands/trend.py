"""Run ``trend``: audit each checkpoint of a training run, in step order, and flag drift.

Each checkpoint is measured exactly as ``inspect`` measures it
(:func:`lora_audit.commands.inspect.inspect_adapter`); the report keeps, per layer and for the
adapter,
the stable rank, the energy rank at τ and ``‖ΔW‖_F`` at every checkpoint.

Order
    By the step in each checkpoint's name (:func:`step_from_name`: ``checkpoint-500``,
    ``step_1000``, ``global_step300``, ``…-e3``, ``epoch_2``, kohya's ``name-step00000500`` and
    ``name-000003``), else by the safetensors metadata ``ss_steps``, else ``ss_epoch``; the
    first of these that gives every checkpoint a distinct number of one kind wins. Otherwise
    the checkpoints keep the order given, with a warning.

Drift
    A series ``x`` (one layer's stable rank or energy rank, or the adapter's mean of either)
    *keeps rising* when, over the last ``window`` checkpoints (default 3), it never falls
    (``x[i+1] ≥ x[i]``, with a ``1e-9`` relative slack for the stable rank) and its total
    rise is more than ``min_rise`` (default 10%) of its value at the window's start:
    ``(x[-1] − x[-window]) / x[-window] > min_rise``. A layer missing from, or untrained
    (ΔW = 0) at, the start of the window is not judged. Each rising series is a finding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from lora_audit.adapter import Adapter
from lora_audit.commands.adapter_info import TOOL
from lora_audit.commands.inspect import AuditOptions, inspect_adapter
from lora_audit.decisions.drift import DRIFT_RULES, rise
from lora_audit.engine.batches import Progress, Warn
from lora_audit.engine.device import device_type
from lora_audit.report import (
    CheckpointSummary,
    Finding,
    InspectReport,
    LayerTrend,
    TrendReport,
    TrendSettings,
)

WEIGHTS_NAME = "adapter_model.safetensors"

_METRIC_WORDS = {"stable_rank": "stable rank", "energy_rank": "energy rank"}

_SEP = r"(?:^|(?<=[-_. ]))"
_STEP = re.compile(
    _SEP + r"(?:checkpoint|ckpt|global[-_]?step|steps?|iter(?:ation)?s?)[-_ ]?(\d+)(?!\d)",
    re.IGNORECASE,
)
_EPOCH = re.compile(_SEP + r"(?:epoch|ep|e)[-_ ]?(\d+)(?!\d)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<!\d[eE])[-_](\d+)$")  # not the exponent of lr1e-4


@dataclass(frozen=True, kw_only=True)
class TrendOptions:
    """What ``trend`` measures and when it flags drift.

    Attributes
    ----------
    audit
        τ, coverage and the engine, as for ``inspect``.
    window
        Number of final checkpoints the drift rule looks at (≥ 2; 3 by default).
    min_rise
        Relative rise over the window above which a never-falling series is flagged (≥ 0).
    fail_on_drift
        Exit 1 when drift is found (else the report says so and the exit code is 0).
    """

    audit: AuditOptions = field(default_factory=AuditOptions)
    window: int = 3
    min_rise: float = 0.1
    fail_on_drift: bool = False


def step_from_name(name: str) -> tuple[int, str] | None:
    """The training position a checkpoint's name states, and its unit.

    ``checkpoint-500``, ``ckpt_500``, ``step-500``, ``global_step500``, ``name-step00000500``
    → ``(500, "step")``; ``epoch_3``, ``ep3``, ``lora-e3`` → ``(3, "epoch")``; a bare trailing
    number (kohya's ``name-000003``) → ``(3, "number")``; else ``None``. The last match in
    the name wins.
    """
    for pattern, unit in ((_STEP, "step"), (_EPOCH, "epoch"), (_NUMBER, "number")):
        found = pattern.findall(name)
        if found:
            return int(found[-1]), unit
    return None


def checkpoint_names(path: Path, tensor_file: Path) -> list[str]:
    """Names that may state a checkpoint's step: the path given, then its tensor file's folder.

    A ``.safetensors`` file gives its stem (``lora-000003``), except ``adapter_model.safetensors``,
    which gives its folder's name (``checkpoint-500``).
    """
    given = path.resolve() if path.name in ("", ".", "..") else path
    if given.name == WEIGHTS_NAME:
        names = [given.parent.name]
    elif given.suffix == ".safetensors":
        names = [given.stem]
    else:
        names = [given.name]
    if tensor_file.name == WEIGHTS_NAME and tensor_file.parent.name not in names:
        names.append(tensor_file.parent.name)
    return names


@dataclass(frozen=True, kw_only=True)
class StepOrder:
    """Checkpoints sorted by step: ``order[i]`` is the index (as given) of the i-th."""

    order: tuple[int, ...]
    steps: tuple[int, ...]
    source: str
    unit: str


def order_checkpoints(adapters: Sequence[Adapter]) -> StepOrder:
    """Sort checkpoints by the first source of steps that covers them all (module docstring)."""
    candidates: list[tuple[str, str, list[int | None]]] = []
    from_names: list[tuple[int, str] | None] = []
    for adapter in adapters:
        found = None
        for name in checkpoint_names(adapter.path, adapter.tensor_file):
            found = step_from_name(name)
            if found is not None:
                break
        from_names.append(found)
    units = {f[1] for f in from_names if f is not None}
    if len(units) == 1:
        candidates.append(("name", units.pop(), [f[0] if f else None for f in from_names]))
    for key, unit in (("ss_steps", "step"), ("ss_epoch", "epoch")):
        candidates.append((key, unit, [_int(adapter.metadata.get(key)) for adapter in adapters]))
    for source, unit, values in candidates:
        known = [v for v in values if v is not None]
        if len(known) == len(values) and len(set(known)) == len(known):
            order = tuple(sorted(range(len(known)), key=known.__getitem__))
            return StepOrder(
                order=order, steps=tuple(known[i] for i in order), source=source, unit=unit
            )
    n = len(adapters)
    return StepOrder(
        order=tuple(range(n)), steps=tuple(range(1, n + 1)), source="order", unit="order"
    )


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value == int(value) else None


def expand_run(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """The checkpoints that ``paths`` name, and notes about what was left out.

    One directory that is not itself an adapter but holds two or more (subdirectories with
    ``adapter_model.safetensors``, or ``.safetensors`` files) stands for all of them. A
    directory with an adapter of its own *and* two or more checkpoint subdirectories (a
    trainer's output directory: the final adapter and its checkpoints) stands for the
    checkpoints; its own adapter is left out with a note. Anything else is taken as given.
    """
    if len(paths) != 1 or not paths[0].is_dir():
        return list(paths), []
    run = paths[0]
    subdirs = sorted(d for d in run.iterdir() if d.is_dir() and (d / WEIGHTS_NAME).is_file())
    if (run / WEIGHTS_NAME).is_file():
        if len(subdirs) >= 2:
            note = (
                f"{run}: its own adapter (the final one?) is not part of the trend; name it "
                "after the checkpoints to include it"
            )
            return list(subdirs), [note]
        return [run], []
    files = sorted(p for p in run.iterdir() if p.suffix == ".safetensors" and p.is_file())
    found = subdirs + files
    return (found, []) if len(found) >= 2 else ([run], [])


def trend_of(
    adapters: Sequence[Adapter],
    *,
    options: TrendOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
    notes: Sequence[str] = (),
) -> TrendReport:
    """Audit each checkpoint, order them by step, and flag the series that keep rising.

    Parameters
    ----------
    adapters
        The checkpoints, in any order.
    notes
        Warnings from finding the checkpoints, carried into the report.
    """
    warnings: list[str] = list(notes)

    def note(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    steps = order_checkpoints(adapters)
    if steps.source == "order":
        note(
            "no step in the checkpoints' names or metadata (ss_steps, ss_epoch) orders them "
            "all; they are taken in the order given"
        )
    ordered = [adapters[i] for i in steps.order]
    reports: list[InspectReport] = []
    for adapter in ordered:
        warnings.extend(f"{adapter.path}: {w}" for w in adapter.warnings)
        report = inspect_adapter(adapter, options=options.audit, progress=progress, warn=warn)
        reports.append(report)
    return trend_from_reports(reports, steps=steps, options=options, warnings=warnings, warn=warn)


def trend_from_reports(
    reports: Sequence[InspectReport],
    *,
    steps: StepOrder,
    options: TrendOptions,
    warnings: Sequence[str] = (),
    warn: Warn | None = None,
) -> TrendReport:
    """The trend of checkpoints already audited (``reports`` in step order, ``steps.steps``).

    :func:`trend_of` audits saved checkpoints and ends here; a training callback that audited
    each checkpoint in memory when it was saved (:mod:`lora_audit.integrations`) starts here.
    """
    checkpoints = tuple(
        _checkpoint(report, step=step) for report, step in zip(reports, steps.steps, strict=True)
    )
    return trend_from_series(
        checkpoints,
        _layer_trends(reports),
        steps=steps,
        options=options,
        warnings=warnings,
        warn=warn,
    )


def window_note(window: int, given: int) -> str:
    """The warning of a trend with fewer checkpoints than its drift window."""
    return f"drift is judged over the last {window} checkpoints; {given} given, so none is flagged"


def trend_from_series(
    checkpoints: Sequence[CheckpointSummary],
    layers: Sequence[LayerTrend],
    *,
    steps: StepOrder,
    options: TrendOptions,
    warnings: Sequence[str] = (),
    warn: Warn | None = None,
) -> TrendReport:
    """The trend report of measured series: drift judged with ``options``' window and rise.

    :func:`trend_from_reports` ends here, and so does reading back a trend file
    (:mod:`lora_audit.commands.trend_file`), which judges the series it holds again.
    """
    warnings = list(warnings)
    if len(checkpoints) < options.window:
        warnings.append(window_note(options.window, len(checkpoints)))
        if warn is not None:
            warn(warnings[-1])
    judged, findings = _drift(layers, checkpoints, steps=steps, options=options)
    engine = options.audit.engine
    drift = bool(findings)
    return TrendReport(
        tool=TOOL,
        settings=TrendSettings(
            energy=options.audit.energy,
            window=options.window,
            min_rise=options.min_rise,
            fail_on_drift=options.fail_on_drift,
            device=device_type(engine.device),
            method=engine.method,
            step_source=steps.source,
            step_unit=steps.unit,
            settings_file=options.audit.settings_file,
        ),
        checkpoints=tuple(checkpoints),
        layers=judged,
        findings=findings,
        status="drift" if drift else "pass",
        warnings=tuple(warnings),
        drifting_layers=sum(bool(layer.drift) for layer in judged),
    )


def _checkpoint(report: InspectReport, *, step: int) -> CheckpointSummary:
    trained = [layer for layer in report.layers if not layer.untrained]
    s = report.summary
    return CheckpointSummary(
        path=report.adapter.path,
        tensor_file=report.adapter.tensor_file,
        format=report.adapter.format,
        step=step,
        layer_count=s.layer_count,
        rank=s.nominal_rank,
        mean_stable_rank=s.mean_stable_rank,
        max_stable_rank=s.max_stable_rank,
        mean_energy_rank=(
            sum(layer.energy_rank for layer in trained) / len(trained) if trained else 0.0
        ),
        frobenius_norm=math.sqrt(sum(layer.frobenius_norm**2 for layer in report.layers)),
        wasted_fraction=s.wasted_fraction,
        untrained_layers=len(s.untrained_layers),
    )


def _layer_trends(reports: Sequence[InspectReport]) -> list[LayerTrend]:
    names: dict[str, None] = {}
    for report in reports:
        names.update((layer.name, None) for layer in report.layers)
    by_name = [{layer.name: layer for layer in report.layers} for report in reports]
    trends = []
    for name in names:
        seen = [found.get(name) for found in by_name]
        last = next(layer for layer in reversed(seen) if layer is not None)
        trends.append(
            LayerTrend(
                name=name,
                shape=last.shape,
                rank=last.rank,
                stable_rank=tuple(None if x is None else x.stable_rank for x in seen),
                energy_rank=tuple(None if x is None else x.energy_rank for x in seen),
                frobenius_norm=tuple(None if x is None else x.frobenius_norm for x in seen),
            )
        )
    return trends


def _drift(
    layers: Sequence[LayerTrend],
    checkpoints: Sequence[CheckpointSummary],
    *,
    steps: StepOrder,
    options: TrendOptions,
) -> tuple[tuple[LayerTrend, ...], tuple[Finding, ...]]:
    findings: list[Finding] = []
    where = checkpoints[-1].path if checkpoints else ""
    window = options.window
    span = _span(steps.steps[-window:], steps.unit)

    def judge(name: str | None, metric: str, series: Sequence[float | int | None]) -> bool:
        slack = 1e-9 if metric == "stable_rank" else 0.0
        up = rise(series, window=window, relative_slack=slack)
        if up is None or not up > options.min_rise:
            return False
        tail = series[-window:]
        path = " → ".join(_value(v, metric) for v in tail)
        what = _METRIC_WORDS[metric] if name is not None else f"mean {_METRIC_WORDS[metric]}"
        findings.append(
            Finding(
                adapter=where,
                layer=name,
                rule=DRIFT_RULES[metric],
                measured=up,
                limit=options.min_rise,
                message=(f"{what} rose {path} over {span} (+{up:.0%}) without falling"),
                fix=(
                    "the update keeps spreading over more directions; compare the last two "
                    "checkpoints (`lora-audit compare`), and consider stopping earlier or a "
                    "lower learning rate"
                ),
                severity="error" if options.fail_on_drift else "warning",
            )
        )
        return True

    for metric in ("stable_rank", "energy_rank"):
        key = "mean_stable_rank" if metric == "stable_rank" else "mean_energy_rank"
        judge(None, metric, [getattr(c, key) for c in checkpoints])
    flagged: list[LayerTrend] = []
    for layer in layers:
        drift = tuple(
            metric
            for metric in ("stable_rank", "energy_rank")
            if judge(layer.name, metric, getattr(layer, metric))
        )
        flagged.append(replace(layer, drift=drift) if drift else layer)
    return tuple(flagged), tuple(findings)


def _span(steps: Sequence[int], unit: str) -> str:
    """``steps 20–80``, ``epochs 2–4``, ``checkpoints #2–#4``."""
    if not steps:
        return ""
    first, last = steps[0], steps[-1]
    if unit == "order":
        return f"checkpoints #{first}–#{last}"
    word = {"step": "steps", "epoch": "epochs"}.get(unit, "checkpoints")
    return f"{word} {first}–{last}"


def _value(v: float | int | None, metric: str) -> str:
    if v is None:
        return "–"
    return str(v) if metric == "energy_rank" else f"{v:.2f}"
