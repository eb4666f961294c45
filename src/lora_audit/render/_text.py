"""Wording shared by the renderers (formatting only; nothing is computed here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lora_audit.report import (
    CheckReport,
    CompareReport,
    Finding,
    InspectReport,
    LayerReport,
    Summary,
    TrendReport,
)

#: How a policy field is named in reports (the flag and policy-file key).
SETTING_NAMES = {
    "energy": "energy",
    "coverage": "coverage",
    "max_waste": "max-waste",
    "max_layer_waste": "max-layer-waste",
    "min_rank_used": "min-rank-used",
}


def finding_text(finding: Finding) -> str:
    """``adapter: message`` or ``adapter: layer NAME message``."""
    if finding.layer is None:
        return f"{finding.adapter}: {finding.message}"
    return f"{finding.adapter}: layer {finding.layer} {finding.message}"


def number(value: float | int) -> str:
    """A measured value or limit: integers as is, fractions with up to 4 significant digits."""
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def policy_values(report: CheckReport) -> str:
    """``energy=0.99, max-waste=0.5, …``."""
    return ", ".join(
        f"{SETTING_NAMES.get(key, key)}={number(value)}" for key, value in report.policy.items()
    )


def policy_text(report: CheckReport) -> str:
    """``energy=0.99, max-waste=0.5, …`` and where the policy came from."""
    return f"{policy_values(report)} ({policy_source(report)})"


def policy_source(report: CheckReport) -> str:
    """``from FILE`` or ``defaults and flags``."""
    return f"from {report.policy_file}" if report.policy_file else "defaults and flags"


def verdict(report: CheckReport) -> str:
    """One line: how many adapters were checked and how they fared."""
    t = report.totals
    if t is None:
        raise ValueError("a check report without totals (build it with commands.check.assemble)")
    parts = [f"{t.checked} adapter{'s' if t.checked != 1 else ''} checked", f"{t.passed} passed"]
    if t.failed:
        parts.append(f"{t.failed} failed with {t.findings} finding(s)")
    if t.unreadable:
        parts.append(f"{t.unreadable} unreadable")
    return f"{report.status.upper()}: " + ", ".join(parts)


def scale_sources_text(sources: Mapping[str, int]) -> str:
    """``config (37 layers)`` or ``module_alpha (10 layers), assumed (2 layers)``."""
    return ", ".join(
        f"{source} ({count} layer{'s' if count != 1 else ''})" for source, count in sources.items()
    )


def assumed_scale_text(report: InspectReport) -> str | None:
    """The loud line for layers whose scale nothing in the file gave; ``None`` when none."""
    s = report.summary
    if not s.assumed_scale_layers:
        return None
    scales = ", ".join(f"{scale:g}" for scale in s.assumed_scales)
    return (
        f"scale ASSUMED for {s.assumed_scale_layers} of {s.layer_count} layers: the file records "
        f"no scale for them, so s = {scales} was used and their σ are only as right as that "
        "guess (see the warnings)"
    )


#: What ``r/dD`` in a rank cell means.
RANK_NOTE = (
    "inner rank r of a LoHa/LoKr layer trained at network_dim D; waste counts only what "
    "compress removes (it rewrites a layer as LoRA only if that is smaller)"
)


def rank_cell(layer: LayerReport) -> str:
    """``r``, or ``r/dD`` for a LoHa/LoKr layer trained at ``network_dim`` D (inner rank r)."""
    if layer.network_dim is not None and layer.network_dim != layer.rank:
        return f"{layer.rank}/d{layer.network_dim}"
    return str(layer.rank)


def retrain_text(s: Summary) -> str:
    """``r=4, lora_alpha=8 (N parameters)``, keep-as-trained for LyCORIS structures, the same
    ranks when the advice equals them, or nothing for an untrained adapter."""
    if s.advice_verdict == "untrained":
        return "nothing to advise: no layer is trained"
    if s.keep_structure:
        plan = "keep as trained (plain LoRA would not be smaller)"
    else:
        plan = f"r={s.recommended_rank}"
        if s.network_alpha is not None:
            plan += f", network_alpha={s.network_alpha:g}"
        elif s.lora_alpha is not None:
            plan += f", lora_alpha={s.lora_alpha:g}"
        if s.advice_verdict == "keep":
            plan = f"as trained: {plan}" + (" with its rank_pattern" if s.rank_pattern else "")
    return f"{plan} ({s.params_retrain:,} parameters)"


def adapter_rank_text(s: Summary, *, config_rank: int | None = None) -> str:
    """``r=16``; ``r=8, rank_pattern 4–32`` when the layers' ranks differ (``r=4–32`` without a
    configured rank); and, for LoHa/LoKr adapters, ``, network_dim=4``."""
    dims = "/".join(str(d) for d in s.network_dims)
    ranks = s.layer_ranks or (s.nominal_rank,)
    if len(ranks) == 1:
        text = f"r={ranks[0]}"
    elif config_rank is not None:
        text = f"r={config_rank}, rank_pattern {ranks[0]}–{ranks[-1]}"
    else:
        text = f"r={ranks[0]}–{ranks[-1]}"
    return text + (f", network_dim={dims}" if dims else "")


def rule_text(s: Summary) -> str | None:
    """``k@0.99-p90-pow2 v1 (τ=0.99, quantile 0.9, pow2): not calibrated: …``
    (the link to the study is in the JSON); ``None`` for a report without a basis."""
    b = s.advice_basis
    if b is None:
        return None
    custom = ", custom quantile (--coverage)" if b.custom else ""
    if not b.tasks:
        evidence = b.tolerance
    else:
        evidence = f"validated on {', '.join(b.tasks)} ({b.seeds} seeds; {b.tolerance})"
    rounding = "pow2" if b.rounding == "pow2" else "unrounded"
    values = f"τ={b.tau:g}, quantile {b.quantile:g}, {rounding}{custom}"
    return f"{b.rule} v{b.version} ({values}): {evidence}"


def trend_verdict(report: TrendReport) -> str:
    """``PASS: no series keeps rising …`` or ``DRIFT: N layer(s) keep rising …``."""
    if not report.findings:
        return f"PASS: no series keeps rising over the last {report.settings.window} checkpoints"
    adapter = [f for f in report.findings if f.layer is None]
    parts = [f"{report.drifting_layers} layer(s) keep rising"]
    if adapter:
        parts.append(
            "and so does the adapter's mean "
            + " and ".join(
                "stable rank" if f.rule == "stable-rank-drift" else "energy rank" for f in adapter
            )
        )
    return "DRIFT: " + " ".join(parts)


def drift_rule_text(report: TrendReport) -> str:
    """What drift means under the report's settings."""
    s = report.settings
    return (
        f"drift = never falling over the last {s.window} checkpoints and rising by more than "
        f"{s.min_rise:.0%}"
    )


def compare_difference_text(report: CompareReport) -> str:
    """The adapter-wide relative difference and cosine, in words."""
    s = report.summary
    return (
        f"‖ΔW_A − ΔW_B‖F / ‖ΔW_A‖F = {optional(s.relative_difference, '.4f')} over the "
        f"compared layers; cosine {optional(s.cosine, '.4f')}"
    )


def compare_overlap_text(report: CompareReport) -> str:
    """The mean subspace overlaps, in words."""
    s = report.summary
    return (
        f"mean {optional(s.mean_left_overlap, '.3f')} (output side), "
        f"{optional(s.mean_right_overlap, '.3f')} (input side): mean cos² of the principal "
        "angles between the top-k singular subspaces (1 = same, 0 = orthogonal)"
    )


def optional(value: float | None, fmt: str) -> str:
    """``value`` formatted, or ``–`` for ``None``."""
    return "–" if value is None else format(value, fmt)


def series_ends(values: Sequence[float | int | None], fmt: str) -> str:
    """``first → last`` of the known values of a series (``–`` when none is known)."""
    known = [v for v in values if v is not None]
    if not known:
        return "–"
    if len(known) == 1:
        return format(known[0], fmt)
    return f"{format(known[0], fmt)} → {format(known[-1], fmt)}"


def step_word(unit: str) -> str:
    """The column name for a trend's steps: ``step``, ``epoch``, ``#`` (order) or ``n``."""
    return {"step": "step", "epoch": "epoch", "order": "#"}.get(unit, "n")
