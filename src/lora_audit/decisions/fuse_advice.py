"""``inspect --fuse-into``: parse the schemes asked for, and one line of advice per adapter.

The rule is plain: fusing into a scheme is safe when the fused model keeps at least
:data:`KEPT_ENOUGH` of the update (``kept`` of :mod:`lora_audit.linalg.fuse`, adapter-wide)
both ways of fusing (merged at full precision then quantized, and added to an already
quantized model then quantized again); the number quoted is the smaller of the two.
Otherwise the advice is to serve the adapter unfused (as a LoRA on the quantized base), or to
fuse into the best scheme checked that does keep enough, and it says when merging at full
precision before quantizing would keep enough where requantizing does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import get_args

from lora_audit.errors import UsageError
from lora_audit.linalg.quantize import SCHEMES, Scheme

__all__ = ["KEPT_ENOUGH", "SCHEMES", "Scheme", "fuse_advice", "parse_schemes"]

#: The share of ‖ΔW‖² a fused model must keep for fusing to be called safe.
KEPT_ENOUGH = 0.9


def parse_schemes(text: str) -> tuple[Scheme, ...]:
    """``"q4_0,nf4"`` → ``("q4_0", "nf4")`` in :data:`SCHEMES` order, each once
    (``q4-0``, ``Q4_0`` and ``mlx_4bit`` are read as ``q4_0`` and ``mlx-4bit``).

    Raises
    ------
    UsageError
        For an empty list or a scheme not known.
    """
    names = [_ALIASES.get(n, n) for p in text.split(",") if (n := p.strip().lower())]
    known = get_args(Scheme)
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        given = unknown[0] if unknown else text
        raise UsageError(
            f"--fuse-into {given!r}: not a quantization scheme lora-audit knows",
            hint=f"use one or more of {', '.join(SCHEMES)}, comma-separated",
        )
    return tuple(s for s in SCHEMES if s in names)


_ALIASES = {"q8-0": "q8_0", "q4-0": "q4_0", "mlx_4bit": "mlx-4bit", "mlx4": "mlx-4bit"}


def _pct(value: float) -> str:
    """Whole percent, rounded down (0.899 keeps "89%", never a passing-looking "90%")."""
    return f"{math.floor(value * 100 + 1e-9):d}%"


def fuse_advice(
    full: Mapping[Scheme, float | None], requantized: Mapping[Scheme, float | None]
) -> str:
    """One sentence: is fusing this adapter into each scheme safe, and what to do if not.

    Parameters
    ----------
    full
        Adapter-wide ``kept`` per scheme, merged at full precision and then quantized
        (``None`` when no layer has an update).
    requantized
        The same, fused into the already quantized weight and quantized again.
    """
    known = {s: min(k, requantized.get(s) or k) for s, k in full.items() if k is not None}
    if not known:
        return "no layer has a non-zero update: fusing changes nothing"
    failing = sorted((k, s) for s, k in known.items() if k < KEPT_ENOUGH)
    passing = sorted(((k, s) for s, k in known.items() if k >= KEPT_ENOUGH), reverse=True)
    if not failing:
        worst_k, worst = min((k, s) for s, k in known.items())
        others = _others([(k, s) for k, s in passing if s != worst])
        return (
            f"fusing into {worst} keeps {_pct(worst_k)} of this update{others}: "
            f"safe to fuse into every scheme checked"
        )
    lost = " and ".join(
        f"into {s} keeps {_pct(k)}" if i else f"{s} keeps {_pct(k)}"
        for i, (k, s) in enumerate(failing)
    )
    advice = f"fusing into {lost} of this update — serve it unfused"
    if passing:
        best_k, best = passing[0]
        advice = f"{advice}, or fuse into {best} ({_pct(best_k)})"
    elif len(known) > 1:
        advice = f"{advice} (no scheme checked keeps {_pct(KEPT_ENOUGH)})"
    worst = failing[0][1]
    at_full = full.get(worst)
    if at_full is not None and at_full >= KEPT_ENOUGH:
        advice += (
            f"; merged at full precision and then quantized once, {worst} keeps "
            f"{_pct(at_full)} (only requantizing an already quantized {worst} model loses it)"
        )
    return advice


def _others(rest: Sequence[tuple[float, Scheme]]) -> str:
    if not rest:
        return ""
    return " (" + ", ".join(f"{s} {_pct(k)}" for k, s in rest) + ")"
