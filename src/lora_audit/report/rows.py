"""One summary row per adapter, for runs over several adapters (``inspect``, ``check``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: ``inspect``: ``keep`` the rank, ``retrain`` at a smaller one (or with a rank_pattern),
#: ``keep-structure`` (LyCORIS: plain LoRA would not be smaller); ``check``: ``pass`` or
#: ``fail``; both: ``error`` (the adapter could not be read).
RowVerdict = Literal["keep", "retrain", "keep-structure", "untrained", "pass", "fail", "error"]


@dataclass(frozen=True, kw_only=True)
class AdapterRow:
    """One adapter's line in a multi-adapter summary; numbers are ``None`` for an error.

    Attributes
    ----------
    path
        The adapter as audited (``AdapterInfo.path``, or ``AdapterError.path``).
    format
        The format read (``peft``, ``kohya``, …).
    layer_count, nominal_rank, recommended_rank
        From the adapter's summary (``recommended_rank``: the rank to retrain at).
    wasted_fraction
        Share of the stored LoRA parameters beyond each layer's energy rank, in [0, 1].
    mean_stable_rank, max_stable_rank
        Over the trained layers.
    findings
        ``check``: the policy findings about this adapter; ``None`` for ``inspect``.
    verdict
        See :data:`RowVerdict`.
    message
        The error message when ``verdict`` is ``error``.
    """

    path: str
    format: str | None
    layer_count: int | None
    nominal_rank: int | None
    recommended_rank: int | None
    wasted_fraction: float | None
    mean_stable_rank: float | None
    max_stable_rank: float | None
    findings: int | None
    verdict: RowVerdict
    message: str | None = None
