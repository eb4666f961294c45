"""What a training run keeps between audits: metrics, early warnings, trend points, files.

Framework-free and torch-free: a trainer integration (:mod:`lora_audit.integrations.transformers`)
audits the live adapter (:func:`lora_audit.inspect_model`) and hands each
:class:`~lora_audit.report.InspectReport` here; :class:`RunAudit` turns it into the metrics
logged under ``lora_audit/…``, the early warnings (:mod:`lora_audit.decisions.training_alerts`),
and at each saved checkpoint a trend point. :meth:`RunAudit.write` writes
``<output_dir>/lora-audit/``: ``trend.json`` (the report ``lora-audit trend -f json`` gives for
the saved checkpoints, which ``lora-audit trend FILE.json`` reads back), ``report.json`` (the
last audit, as ``lora-audit inspect -f json``) and ``advice.txt`` (its advice lines).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_audit.choices import device_name, method_name
from lora_audit.decisions.training_alerts import Alert, AlertKind, AlertRules, Measurement, alerts
from lora_audit.report import InspectReport, TrendReport

#: The prefix of every metric name.
PREFIX = "lora_audit/"

#: The folder below the trainer's ``output_dir`` the files go to.
FOLDER = "lora-audit"


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile with linear interpolation (numpy's default); 0.0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_metrics(report: InspectReport, *, per_layer: bool = False) -> dict[str, float]:
    """The metrics logged for one audit (names in ``docs/training.md``).

    Ranks are over the trained layers (``ΔW ≠ 0``); ``delta_w_norm`` is
    ``√Σ‖ΔWₗ‖_F²`` over all layers, as ``trend`` reports it.
    """
    trained = [layer for layer in report.layers if not layer.untrained]
    energy_ranks = [float(layer.energy_rank) for layer in trained]
    s = report.summary
    metrics = {
        "stable_rank_mean": s.mean_stable_rank,
        "stable_rank_max": s.max_stable_rank,
        "energy_rank_median": quantile(energy_ranks, 0.5),
        "energy_rank_p90": quantile(energy_ranks, 0.9),
        "wasted_fraction": s.wasted_fraction,
        "sigma1_max": max((layer.spectral_norm for layer in report.layers), default=0.0),
        "delta_w_norm": math.sqrt(sum(layer.frobenius_norm**2 for layer in report.layers)),
        "untrained_layers": float(len(s.untrained_layers)),
    }
    if per_layer:
        for layer in report.layers:
            metrics[f"layers/{layer.name}/stable_rank"] = layer.stable_rank
            metrics[f"layers/{layer.name}/energy_rank"] = float(layer.energy_rank)
            metrics[f"layers/{layer.name}/sigma1"] = layer.spectral_norm
    return {PREFIX + name: float(value) for name, value in metrics.items()}


def measurement(report: InspectReport, *, step: int) -> Measurement:
    """What the alert rules read from one audit."""
    return Measurement(
        step=step,
        sigma1={layer.name: layer.spectral_norm for layer in report.layers},
        rank={layer.name: layer.rank for layer in report.layers},
        energy_rank={layer.name: layer.energy_rank for layer in report.layers},
        energy=report.settings.energy,
        untrained=report.summary.untrained_layers,
    )


@dataclass(kw_only=True)
class RunAudit:
    """The state of one run's audit (mutable; one per training run).

    Attributes
    ----------
    rules
        When the early warnings fire.
    per_layer
        Also log each layer's stable rank, energy rank and σ₁.
    history
        ``(step, metrics)`` of every audit, in order.
    checkpoints
        ``(step, report)`` of every saved checkpoint, in order.
    last
        The latest audit.
    """

    rules: AlertRules = field(default_factory=AlertRules)
    per_layer: bool = False
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    checkpoints: list[tuple[int, InspectReport]] = field(default_factory=list)
    last: InspectReport | None = None
    fired: set[AlertKind] = field(default_factory=set)
    _previous: Measurement | None = None

    def observe(self, report: InspectReport, *, step: int) -> tuple[dict[str, float], list[Alert]]:
        """Record one audit: the metrics to log and the warnings not given before."""
        metrics = run_metrics(report, per_layer=self.per_layer)
        current = measurement(report, step=step)
        found = alerts(self._previous, current, rules=self.rules, fired=frozenset(self.fired))
        self.fired.update(alert.kind for alert in found)
        self._previous, self.last = current, report
        self.history.append((step, metrics))
        return metrics, found

    def checkpoint(self, report: InspectReport, *, step: int) -> None:
        """Record the audit of the checkpoint saved at ``step`` (its trend point)."""
        self.checkpoints = [(s, r) for s, r in self.checkpoints if s != step]
        self.checkpoints.append((step, report))
        self.last = report

    def trend(self, *, window: int = 3, min_rise: float = 0.1) -> TrendReport | None:
        """The trend of the saved checkpoints so far (``None`` before the first)."""
        if not self.checkpoints:
            return None
        from lora_audit.commands.inspect import AuditOptions
        from lora_audit.commands.trend import StepOrder, TrendOptions, trend_from_reports
        from lora_audit.engine.device import EngineOptions

        first = self.checkpoints[0][1].settings
        engine = EngineOptions(device=device_name(first.device), method=method_name(first.method))
        options = TrendOptions(
            audit=AuditOptions(energy=first.energy, coverage=first.coverage, engine=engine),
            window=window,
            min_rise=min_rise,
        )
        steps = tuple(step for step, _ in self.checkpoints)
        order = StepOrder(order=tuple(range(len(steps))), steps=steps, source="name", unit="step")
        warnings = [f"{r.adapter.path}: {w}" for _, r in self.checkpoints for w in r.warnings]
        reports = [report for _, report in self.checkpoints]
        return trend_from_reports(reports, steps=order, options=options, warnings=warnings)

    def write(self, output_dir: str | os.PathLike[str]) -> list[Path]:
        """Write ``trend.json``, ``report.json`` and ``advice.txt`` below ``output_dir``.

        Returns the files written (none before the first audit).
        """
        from lora_audit.render import OutputFormat, render

        folder = Path(output_dir) / FOLDER
        written: list[Path] = []
        trend = self.trend()
        outputs: list[tuple[str, Any]] = [("trend.json", trend), ("report.json", self.last)]
        for name, report in outputs:
            if report is not None:
                written.append(_write(folder / name, render(report, OutputFormat.JSON)))
        if self.last is not None:
            advice = "".join(line + "\n" for line in self.last.summary.advice)
            written.append(_write(folder / "advice.txt", advice))
        return written


def _write(path: Path, text: str) -> Path:
    """Replace ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
