"""The drift rule of ``trend``: a series that rises over its last checkpoints without falling.

Pure: numbers in, a relative rise (or ``None``) out. ``commands.trend`` applies it to each
layer's stable and energy rank across checkpoints and turns what it flags into findings."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

#: The drift rules, by the metric they watch.
DRIFT_RULES = {"stable_rank": "stable-rank-drift", "energy_rank": "energy-rank-drift"}


def rise(
    series: Sequence[float | int | None], *, window: int, relative_slack: float = 0.0
) -> float | None:
    """The relative rise of a series that never falls over its last ``window`` values.

    Returns
    -------
    float or None
        ``(x[-1] − x[-window]) / x[-window]`` when the last ``window`` values are all known,
        ``x[-window] > 0`` and ``x[i+1] ≥ x[i] − relative_slack·max|x|`` throughout;
        otherwise ``None`` (not judged, or not rising).
    """
    if window < 2 or len(series) < window:
        return None
    tail = series[-window:]
    if any(v is None for v in tail):
        return None
    values = [float(v) for v in tail if v is not None]
    if values[0] <= 0:
        return None
    slack = relative_slack * max(abs(v) for v in values)
    if any(b < a - slack for a, b in itertools.pairwise(values)):
        return None
    return (values[-1] - values[0]) / values[0]
