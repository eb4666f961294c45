"""Wording of ``inspect --base``, shared by the table and Markdown renderers.

Formatting only: every number comes finished in the report.
"""

from __future__ import annotations

import math

from lora_audit.report import BaseLayerReport, BaseSummary, FuseSummary

#: Per-layer columns, in order (:func:`base_cells` gives the matching cells).
BASE_HEADERS = ("k", "sr W", "sr W+ΔW", "Δsr", "‖ΔW‖/‖W‖", "σ₁ ratio", "align", "overlap", "ampl.")

BASE_LABELS = {
    "weight_spectral_norm": "σ₁(W)",
    "weight_stable_rank": "sr(W)",
    "merged_spectral_norm": "σ₁(W+ΔW)",
    "merged_stable_rank": "sr(W+ΔW)",
    "stable_rank_change": "Δsr",
    "relative_spectral": "σ₁ ratio",
    "top_k_alignment": "alignment",
    "left_angles": "angles",
    "right_angles": "angles",
    "subspace_overlap": "overlap",
    "weight_frobenius_norm": "‖W‖F",
    "merged_frobenius_norm": "‖W+ΔW‖F",
    "update_frobenius_norm": "‖ΔW‖F",
    "relative_frobenius": "‖ΔW‖/‖W‖",
    "update_spectral_norm": "σ₁(ΔW)",
    "amplification": "amplification",
    "update_energy_at_rank": "DoRA energy at r",
}


def base_num(x: float | None, fmt: str = ".3g") -> str:
    if x is None or x != x or x in (float("inf"), float("-inf")):
        return "–"
    return format(x, fmt)


def base_cells(b: BaseLayerReport) -> list[str]:
    """One layer's cells under :data:`BASE_HEADERS`."""
    return [
        str(b.k),
        base_num(b.weight_stable_rank, ".1f"),
        base_num(b.merged_stable_rank, ".1f"),
        base_num(b.stable_rank_change, "+.2f"),
        base_num(b.relative_frobenius, ".3f"),
        base_num(b.relative_spectral, ".3g"),
        base_num(b.top_k_alignment, ".3f"),
        base_num(b.subspace_overlap, ".3f"),
        base_num(b.amplification, ".1f"),
    ]


#: The column ``--intruders`` adds (:func:`intruder_cell`).
INTRUDER_HEADER = "intruders"


def intruder_cell(b: BaseLayerReport) -> str:
    """Intruder dimensions of one layer and their energy share; ``–`` when not examined."""
    x = b.intruders
    if x is None:
        return "–"
    return str(x.count) if x.count == 0 else f"{x.count} ({x.energy:.1%})"


def intruder_summary_text(base: BaseSummary) -> str | None:
    """The summary line of ``--intruders``; ``None`` when they were not computed."""
    x = base.intruders
    if x is None:
        return None
    where = "" if x.layers_pattern is None else f" matching {x.layers_pattern!r}"
    text = (
        f"{x.total} in {x.layers_with_intruders} of {x.layers_examined} layers{where} (top "
        f"{x.top} singular vectors of W+ΔW whose best |cos| with W's is < {x.epsilon:g}"
    )
    if x.max_layer is not None:
        text += f"; most: {x.max_count} in {x.max_layer}"
    return text + "; exact, full SVDs)"


def base_summary_rows(base: BaseSummary) -> list[tuple[str, str]]:
    """Adapter-wide base-aware numbers, and which are exact or iterative, as (label, text)."""
    where = base.index or (base.files[0] if len(base.files) == 1 else base.path)
    matched = f"{base.layers_matched} layers"
    if base.unmatched_layers:
        matched += f"; no base weight for {len(base.unmatched_layers)}: " + ", ".join(
            base.unmatched_layers[:5]
        )
    st = base.stats

    def stat(name: str, what: str = "mean", fmt: str = ".3g") -> str:
        s = st.get(name)
        return "–" if s is None else base_num(getattr(s, what), fmt)

    def extreme(name: str, what: str, fmt: str = ".3g") -> str:
        s = st.get(name)
        if s is None:
            return "–"
        return f"{base_num(getattr(s, what), fmt)} ({getattr(s, what + '_layer')})"

    k = "each layer's energy rank" if base.k is None else str(base.k)
    rows = [
        ("base", f"{where} ({len(base.files)} file(s))"),
        ("matched", matched),
        (
            "stable rank",
            f"W mean {stat('weight_stable_rank')} → W+ΔW mean {stat('merged_stable_rank')}; "
            f"Δsr median {stat('stable_rank_change', 'median', '+.3g')}, from "
            f"{extreme('stable_rank_change', 'min', '+.3g')} to "
            f"{extreme('stable_rank_change', 'max', '+.3g')}",
        ),
        (
            "update size",
            f"‖ΔW‖F/‖W‖F {base_num(base.total_relative_frobenius)} over all layers, max "
            f"{extreme('relative_frobenius', 'max')}; σ₁(ΔW)/σ₁(W) median "
            f"{stat('relative_spectral', 'median')}, max {extreme('relative_spectral', 'max')}",
        ),
        (
            "alignment",
            f"k = {k}: ‖U_kᵀΔW V_k‖F/‖ΔW‖F mean {stat('top_k_alignment')} (random "
            f"{stat('random_alignment')}), subspace overlap mean {stat('subspace_overlap')} "
            f"(random {stat('random_overlap')}), amplification median "
            f"{stat('amplification', 'median')}",
        ),
    ]
    if "update_energy_at_rank" in st:
        rows.append(
            (
                "DoRA",
                f"the effective update keeps {stat('update_energy_at_rank', 'mean', '.4f')} of "
                f"its energy in rank r on average (min "
                f"{extreme('update_energy_at_rank', 'min', '.4f')})",
            )
        )
    if (intruders := intruder_summary_text(base)) is not None:
        rows.append(("intruders", intruders))
    exact = ", ".join(dict.fromkeys(BASE_LABELS.get(f, f) for f in base.exact))
    iterative = ", ".join(dict.fromkeys(BASE_LABELS.get(f, f) for f in base.iterative))
    status = "" if base.converged else "; NOT all converged"
    rows.append(("exact", exact))
    rows.append(
        (
            "iterative",
            f"{iterative} — block Krylov, residual ≤ {base.tolerance:.0e}·σ₁ (worst "
            f"{base.max_residual:.1e}, subspace error ≤ {base.max_subspace_error:.1e}{status})",
        )
    )
    return rows


def _pct(x: float | None) -> str:
    """Percent to 0.1, rounded down like the advice's (0.8996 is "89.9%", not "90.0%")."""
    return "–" if x is None else f"{math.floor(x * 1000 + 1e-9) / 10:.1f}%"


def fuse_summary_rows(fuse: FuseSummary) -> list[tuple[str, str]]:
    """``--fuse-into``: per scheme, what fusing keeps of the update, and the advice line."""
    rows = []
    for s in fuse.schemes:
        text = (
            f"kept {_pct(s.kept)} merged at full precision (error {_pct(s.relative_error)}), "
            f"{_pct(s.requantized_kept)} requantized (error "
            f"{_pct(s.requantized_relative_error)}); {_pct(s.below_half_step)} of ΔW's entries "
            f"below half a step"
        )
        if s.worst_layer is not None:
            text += f"; worst {_pct(s.worst_kept)} ({s.worst_layer})"
        if s.fallback_layers:
            text += f"; {len(s.fallback_layers)} layer(s) kept in f16"
        rows.append((f"fuse {s.scheme}", text))
    rows.append(("fuse advice", fuse.advice))
    return rows
