"""Wording shared by the renderers (formatting only; nothing is computed here)."""

from __future__ import annotations

from collections.abc import Mapping

from lora_audit.report import CheckReport, Finding, InspectReport, LayerReport, Summary

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
    """``r=4, lora_alpha=8 (N parameters)``, or keep-as-trained for LyCORIS structures."""
    if s.keep_structure:
        plan = "keep as trained (plain LoRA would not be smaller)"
    else:
        plan = f"r={s.recommended_rank}"
        if s.lora_alpha is not None:
            plan += f", lora_alpha={s.lora_alpha:g}"
    return f"{plan} ({s.params_retrain:,} parameters)"


def adapter_rank_text(s: Summary) -> str:
    """``r=16`` and, for LoHa/LoKr adapters, ``, network_dim=4``."""
    dims = "/".join(str(d) for d in s.network_dims)
    return f"r={s.nominal_rank}" + (f", network_dim={dims}" if dims else "")
