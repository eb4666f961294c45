"""Early warnings while an adapter trains, from two consecutive measurements.

Each rule fires at most once per run (the caller keeps which have fired); the defaults are
those of :class:`AlertRules` and are stated in ``docs/training.md``.

``untrained``
    At the first measurement at or after ``untrained_after_steps``, some layers still have
    ``ΔW = 0`` (σ₁ = 0). Factors that the model holds only as shards are never measured
    (the caller skips them), so a zero here is a zero in the model.
``spike``
    A layer's σ₁ grew by more than ``spike_factor`` between two consecutive measurements,
    the earlier one at or after ``spike_after_steps``. PEFT starts from ``B = 0``, so the first
    interval of every run is an infinite jump; the warm-up skips it and a zero σ₁ is never a
    baseline.
``concentrated``
    At the first measurement at or after ``concentration_after_steps``, half the trained
    layers of nominal rank ≥ ``concentration_min_rank`` keep τ of their energy in at most
    ``1/concentration_ratio`` of their rank: a hint that the next run could use a smaller r.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

AlertKind = Literal["untrained", "spike", "concentrated"]

#: How many layer names a message lists before "… N more".
SHOWN = 3


@dataclass(frozen=True, kw_only=True)
class AlertRules:
    """When the early warnings fire (see the module docstring)."""

    untrained_after_steps: int = 50
    spike_factor: float = 3.0
    spike_after_steps: int = 200
    concentration_ratio: float = 4.0
    concentration_after_steps: int = 200
    concentration_min_rank: int = 8


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """What one audit of the live adapter found, per layer name."""

    step: int
    sigma1: Mapping[str, float]
    rank: Mapping[str, int]
    energy_rank: Mapping[str, int]
    energy: float = 0.99
    untrained: tuple[str, ...] = field(default=())


@dataclass(frozen=True, kw_only=True)
class Alert:
    """One early warning: its kind and the one message the trainer's logger gets."""

    kind: AlertKind
    message: str


def alerts(
    previous: Measurement | None,
    current: Measurement,
    *,
    rules: AlertRules,
    fired: frozenset[AlertKind] = frozenset(),
) -> list[Alert]:
    """The warnings ``current`` raises that have not ``fired`` yet in this run."""
    found = [
        _untrained(current, rules),
        _spike(previous, current, rules),
        _concentrated(current, rules),
    ]
    return [alert for alert in found if alert is not None and alert.kind not in fired]


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f", … {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _untrained(current: Measurement, rules: AlertRules) -> Alert | None:
    if current.step < rules.untrained_after_steps or not current.untrained:
        return None
    n, total = len(current.untrained), len(current.sigma1)
    return Alert(
        kind="untrained",
        message=(
            f"lora-audit: {n} of {total} LoRA layers are still untrained (ΔW = 0) after "
            f"{current.step} steps: {_names(current.untrained)}. Likely causes: lora_B frozen "
            "(requires_grad=False, or left out of the optimizer's parameter groups), a "
            "learning rate of 0 (a warm-up or scheduler that has not started), or a DeepSpeed "
            "ZeRO-3 run whose parameters are not gathered for the update or the save "
            "(PEFT #1402)."
        ),
    )


def _spike(previous: Measurement | None, current: Measurement, rules: AlertRules) -> Alert | None:
    if previous is None or previous.step < rules.spike_after_steps:
        return None
    worst: tuple[float, str] | None = None
    for name, now in current.sigma1.items():
        before = previous.sigma1.get(name, 0.0)
        if before > 0 and math.isfinite(now):
            ratio = now / before
            if ratio > rules.spike_factor and (worst is None or ratio > worst[0]):
                worst = (ratio, name)
    if worst is None:
        return None
    ratio, name = worst
    return Alert(
        kind="spike",
        message=(
            f"lora-audit: σ₁ of {name} jumped {ratio:.3g}× between steps {previous.step} and "
            f"{current.step} ({previous.sigma1[name]:.4g} → {current.sigma1[name]:.4g}), more "
            f"than {rules.spike_factor:g}× in one interval: a spectral spike, which can break "
            "merging or stacking this adapter with others; look at the data and the learning "
            "rate around these steps (gradient clipping, a lower peak rate)."
        ),
    )


def _concentrated(current: Measurement, rules: AlertRules) -> Alert | None:
    if current.step < rules.concentration_after_steps:
        return None
    ratios = sorted(
        current.energy_rank[name] / rank
        for name, rank in current.rank.items()
        if rank >= rules.concentration_min_rank and current.sigma1.get(name, 0.0) > 0
    )
    if not ratios or ratios[(len(ratios) - 1) // 2] > 1 / rules.concentration_ratio:
        return None
    ranks = sorted(current.rank[n] for n in current.rank if current.sigma1.get(n, 0.0) > 0)
    k = sorted(current.energy_rank[n] for n in current.rank if current.sigma1.get(n, 0.0) > 0)
    return Alert(
        kind="concentrated",
        message=(
            f"lora-audit: at step {current.step}, half the trained layers keep "
            f"{current.energy:.4g} of their energy in at most "
            f"{ratios[(len(ratios) - 1) // 2]:.0%} of their rank (median energy rank "
            f"{k[(len(k) - 1) // 2]} of r = {ranks[-1]}): the next run could use a smaller r; "
            "the advice at the end of this run names one."
        ),
    )
