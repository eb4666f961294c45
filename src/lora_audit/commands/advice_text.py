"""The inspect report's advice: the lines a user reads, the one-sentence why, and the basis.

Everything here is wording and bookkeeping over numbers already decided
(:class:`~lora_audit.decisions.retrain_advice.RankPlan`); nothing is measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lora_audit.decisions.advice_rule import AdviceRule, quantile_name
from lora_audit.decisions.retrain_advice import RankPlan
from lora_audit.report import AdviceBasis

#: Formats whose trainers call the alpha ``network_alpha`` (kohya/sd-scripts, LyCORIS).
NETWORK_ALPHA_FORMATS = frozenset({"kohya", "lycoris"})


@dataclass(frozen=True, kw_only=True)
class AdviceContext:
    """What the advice wording needs besides the plan.

    Attributes
    ----------
    params, params_after
        Parameters stored now, and after ``compress --energy τ``.
    layer_count
        Layers in the adapter.
    layer_ranks
        The distinct ranks the layers have now, ascending.
    untrained
        Names of the untrained layers (ΔW = 0).
    structured
        Some layers are LoHa/LoKr/Tucker.
    network_alpha
        The adapter's trainer calls the alpha ``network_alpha`` (kohya, LyCORIS).
    mean_stable_rank, max_stable_rank
        Over the trained layers.
    """

    params: int
    params_after: int
    layer_count: int
    layer_ranks: tuple[int, ...]
    untrained: tuple[str, ...]
    structured: bool
    network_alpha: bool
    mean_stable_rank: float
    max_stable_rank: float


def advice_basis(rule: AdviceRule) -> AdviceBasis:
    """The report's ``summary.advice_basis`` for ``rule``."""
    b = rule.basis
    return AdviceBasis(
        rule=rule.id,
        version=rule.version,
        tau=rule.tau,
        quantile=rule.quantile,
        rounding=rule.rounding,
        rank_pattern=rule.rank_pattern,
        custom=rule.custom,
        tasks=b.tasks,
        seeds=b.seeds,
        tolerance=b.tolerance,
        docs=b.docs,
        not_validated_on=b.not_validated_on,
    )


def _tau(value: float) -> str:
    return f"{value:.4g}"


def _at_least(fraction: float) -> str:
    """``≥99.6%``, rounded down so that it never claims more than was kept."""
    return f"≥{math.floor(fraction * 1000) / 10:.1f}%"


def _evidence(rule: AdviceRule) -> str:
    """The basis's own words while it has no task (``not calibrated: …``), or ``validated on
    2 task(s) × 3 seeds``."""
    if rule.custom:
        return "its quantile set by --coverage, so the rule's basis does not apply"
    b = rule.basis
    if not b.tasks:
        return b.tolerance
    return f"validated on {len(b.tasks)} task(s) × {b.seeds} seeds"


def advice_reason(plan: RankPlan, ctx: AdviceContext) -> str:
    """Why this advice, for this adapter, in one sentence ("" when untrained)."""
    rule = plan.rule
    if plan.untrained:
        return ""
    return (
        f"Why: at τ={_tau(rule.tau)} the {quantile_name(rule.quantile)} of the trained layers' "
        f"energy ranks is k={plan.quantile} (stable rank mean {ctx.mean_stable_rank:.2f}, max "
        f"{ctx.max_stable_rank:.2f}), and the advised ranks keep "
        f"{_at_least(plan.energy_kept)} of every trained layer's energy (rule {rule.label}, "
        f"{_evidence(rule)}; see docs/advice.md)."
    )


def _alpha_text(plan: RankPlan, ctx: AdviceContext) -> str:
    if plan.lora_alpha is None:
        return ""
    name = "network_alpha" if ctx.network_alpha else "lora_alpha"
    return f", {name}={plan.lora_alpha:g}"


def _patterns_text(plan: RankPlan) -> str:
    parts = []
    if plan.rank_pattern:
        parts.append(f"a rank_pattern for {len(plan.rank_pattern)} layer(s)")
    if plan.alpha_pattern:
        parts.append(f"an alpha_pattern for {len(plan.alpha_pattern)} layer(s)")
    return f", with {' and '.join(parts)}" if parts else ""


def retrain_line(plan: RankPlan, ctx: AdviceContext) -> str:
    """The retraining sentence for a plan that is not ``untrained``."""
    tau = _tau(plan.rule.tau)
    params = ctx.params
    if plan.verdict == "keep-structure":
        return (
            f"Keep the LyCORIS structure as trained: plain LoRA at the ranks these layers need "
            f"at τ={tau} would take {plan.lora_params:,} parameters, not fewer than the "
            f"{params:,} they store."
        )
    alpha, patterns = _alpha_text(plan, ctx), _patterns_text(plan)
    if plan.verdict == "retrain":
        plain = " as plain LoRA" if ctx.structured else ""
        cost = (
            f"needs {plan.params:,} parameters instead of {params:,}"
            if plan.params != params
            else f"needs as many parameters as now ({params:,}), laid out differently"
        )
        return (
            f"Retrain{plain} at r={plan.rank}{alpha}{patterns}: it covers "
            f"{plan.layers_covered} of {ctx.layer_count} layers at τ={tau} and {cost}."
        )
    if len(ctx.layer_ranks) > 1:  # keep, with the rank_pattern the adapter has
        low, high = ctx.layer_ranks[0], ctx.layer_ranks[-1]
        return (
            f"If you retrain, keep the ranks you trained (r={plan.rank}{alpha}{patterns}, "
            f"ranks {low}–{high}): at τ={tau} every layer's advised rank is the one it has."
        )
    rule = plan.rule
    return (
        f"Retrain at the same r={plan.rank}: at τ={tau}, {rule.quantile:.0%} of the trained "
        f"layers need up to {plan.quantile} of its ranks, and a smaller "
        f"{'power of two' if rule.rounding == 'pow2' else 'rank'} would cut into them (a low "
        "stable rank says the energy is concentrated, not that the last "
        f"{1 - rule.tau:.2g} of it fits in fewer ranks)."
    )


def advice_lines(
    plan: RankPlan,
    ctx: AdviceContext,
    *,
    energy: float,
    command: str | None,
    top_wasters: Sequence[str] = (),
    command_note: str | None = None,
) -> tuple[str, ...]:
    """What to do, gain first: truncate now (the exact command), then how to retrain, why."""
    if plan.untrained:
        return (
            f"Untrained adapter: all {ctx.layer_count} layers have ΔW = 0 (every B is zero, as "
            "an adapter saved before training is), so there is nothing to truncate and no rank "
            "to advise; train it first, or find out why no layer received a gradient.",
        )
    lines: list[str] = []
    if command is not None:
        saved = 1 - ctx.params_after / ctx.params
        most = f"; most in {', '.join(top_wasters[:3])}" if top_wasters else ""
        lines.append(
            f"Truncate now to drop {ctx.params - ctx.params_after:,} of {ctx.params:,} "
            f"parameters ({saved:.1%}) and keep ≥{_tau(energy)} of every layer's energy"
            f"{most}: `{command}`" + (f" ({command_note})" if command_note else "")
        )
    lines.append(retrain_line(plan, ctx))
    lines.append(advice_reason(plan, ctx))
    if ctx.untrained:
        lines.append(
            f"{len(ctx.untrained)} layer(s) are untrained (ΔW = 0); drop them from target_modules."
        )
    return tuple(lines)
