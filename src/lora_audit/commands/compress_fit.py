"""``compress --fit TARGET``: the options under which compress writes the best adapter that
the target loads and reads as PEFT does (the rules: :mod:`lora_audit.decisions.serving_fit`).

Nothing here computes: the fit is the compress pipeline with the rank rule clamped to the
target's bound, ``uniform_rank`` where the server needs one rank, and the refusals first.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from lora_audit.commands.adapter_info import adapter_info
from lora_audit.commands.serving import converter_stops
from lora_audit.decisions.serving_fit import fit_refusal, fit_rule, fit_uniform
from lora_audit.errors import UsageError

if TYPE_CHECKING:
    from lora_audit.adapter import Adapter
    from lora_audit.commands.compress import CompressOptions
    from lora_audit.decisions.compress_ranks import RankRule


def given_rule(
    fitting: bool,
    *,
    rank: int | None,
    energy: float | None,
    ratio: float | None,
    budget: str | None,
    min_rank: int,
    max_rank: int | None,
) -> RankRule | None:
    """The rule the flags give: exactly one of them, or none with ``--fit`` (``None``: the
    target's own, :func:`~lora_audit.decisions.serving_fit.fit_rule`).

    Raises
    ------
    UsageError
        As :func:`~lora_audit.commands.options.rank_rule` does.
    """
    from lora_audit.commands.options import rank_rule

    if fitting and all(x is None for x in (rank, energy, ratio, budget)):
        return None
    return rank_rule(
        rank=rank,
        energy=energy,
        ratio=ratio,
        budget=budget,
        min_rank=min_rank,
        max_rank=max_rank,
    )


def fit_options(adapter: Adapter, options: CompressOptions) -> CompressOptions:
    """``options`` with ``options.fit``'s constraints applied (unchanged without a fit).

    Raises
    ------
    UsageError
        When the target refuses what the adapter has (:func:`~lora_audit.decisions.
        serving_fit.fit_refusal`), when the rank rule contradicts the target's bound, or for
        a DoRA adapter without ``base`` (its output would only approximate the input).
    """
    target = options.fit
    if target is None:
        return options
    refusal = fit_refusal(
        target,
        adapter_info(adapter),
        adapter.layers,
        bias=str(adapter.config.get("bias") or "none"),
        stops=len(converter_stops(adapter)) if adapter.format == "peft" else None,
    )
    if refusal is not None:
        raise refusal
    if options.base is None and any(x.dora for x in adapter.layers):
        raise UsageError(
            f"{adapter.path}: --fit {target} writes an exact fit, and a DoRA adapter is "
            "truncated exactly only with the base weights (--allow-dora would keep magnitude "
            "vectors trained against the full-rank update)",
            hint="pass --base BASE (the base model's weights)",
        )
    ranks = [x.rank for x in adapter.layers]
    return replace(
        options,
        rule=fit_rule(target, options.rule, ranks),
        uniform_rank=options.uniform_rank or fit_uniform(target),
    )
