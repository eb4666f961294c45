"""GitHub-flavoured Markdown for ``trend`` and ``compare`` (``$GITHUB_STEP_SUMMARY``, pull
request comments). Every name from a file passes :func:`~lora_audit.render.markdown.code` or
:func:`~lora_audit.render.markdown.prose`, after :func:`~lora_audit.render.escape.for_terminal`
on the whole report."""

from __future__ import annotations

from lora_audit.render._text import (
    compare_difference_text,
    compare_overlap_text,
    drift_rule_text,
    optional,
    series_ends,
    step_word,
    trend_verdict,
)
from lora_audit.render.escape import escaped_report, for_terminal
from lora_audit.render.markdown import code, prose, table
from lora_audit.report import CompareReport, TrendReport

_DRIFT_MARKS = {"stable_rank": "sr", "energy_rank": "k"}


@escaped_report(for_terminal)
def render_trend(report: TrendReport, *, width: int = 100, color: bool = False) -> str:
    """The trend report as Markdown: verdict, checkpoints, drift findings, then every layer
    (folded in a ``<details>`` block); ``width`` and ``color`` are ignored."""
    del width, color
    s = report.settings
    tau = f"{s.energy:g}"
    icon = "📈" if report.findings else "✅"
    word = step_word(s.step_unit)
    lines = [f"## {icon} lora-audit trend: {trend_verdict(report)}", ""]
    lines += [f"{len(report.checkpoints)} checkpoints in {word} order; {drift_rule_text(report)}."]
    lines.append("")
    lines += table(
        [
            word,
            "checkpoint",
            "layers",
            "r",
            "mean sr",
            "max sr",
            f"mean k@{tau}",
            "‖ΔW‖F",
            "wasted",
        ],
        [
            [
                str(c.step),
                code(c.path),
                str(c.layer_count),
                str(c.rank),
                f"{c.mean_stable_rank:.2f}",
                f"{c.max_stable_rank:.2f}",
                f"{c.mean_energy_rank:.2f}",
                f"{c.frobenius_norm:.3g}",
                f"{c.wasted_fraction:.1%}",
            ]
            for c in report.checkpoints
        ],
        right=7,
    )
    if report.findings:
        lines += ["", "### Drift", ""]
        lines += [
            f"- {code(f.layer) if f.layer else '(adapter)'} · {code(f.rule)}: {prose(f.message)}"
            for f in report.findings
        ]
        lines += ["", f"Fix: {prose(report.findings[0].fix)}"]
    if report.warnings:
        lines += ["", "### Warnings", ""]
        lines += [f"- {prose(w)}" for w in report.warnings]
    lines += ["", f"<details><summary>Per layer ({len(report.layers)})</summary>", ""]
    rows = [
        [
            code(layer.name),
            " ".join(f"↑ {_DRIFT_MARKS.get(m, m)}" for m in layer.drift),
            f"{layer.shape[0]}×{layer.shape[1]}",
            str(layer.rank),
            series_ends(layer.stable_rank, ".2f"),
            series_ends(layer.energy_rank, "d"),
            series_ends(layer.frobenius_norm, ".3g"),
        ]
        for layer in report.layers
    ]
    header = ["layer", "drift", "shape", "r", "stable rank", f"k@{tau}", "‖ΔW‖F"]
    lines += table(header, rows, right=4)
    lines += ["", "</details>", "", f"<sub>{report.tool.name} {report.tool.version}</sub>"]
    return "\n".join(lines) + "\n"


@escaped_report(for_terminal)
def render_compare(report: CompareReport, *, width: int = 100, color: bool = False) -> str:
    """The compare report as Markdown: summary, then one row per matched layer."""
    del width, color
    a, b, s = report.adapter_a, report.adapter_b, report.summary
    lines = [f"## lora-audit compare: {code(a.path)} vs {code(b.path)}", ""]
    for label, info in (("A", a), ("B", b)):
        rank = f", r={info.rank}" if info.rank is not None else ""
        lines.append(
            f"- {label}: {code(info.path)} ({prose(info.format)}{rank}, {info.layer_count} layers)"
        )
    shapes = f", {len(report.mismatched)} differ in shape" if report.mismatched else ""
    lines.append(f"- layers: {s.matched} matched, {len(report.layers)} compared{shapes}")
    for label, names in (("only in A", s.only_in_a), ("only in B", s.only_in_b)):
        if names:
            lines.append(f"- {label} ({len(names)}): " + ", ".join(code(n) for n in names))
    lines += [
        f"- shape differs: {code(m.name)} {m.shape_a[0]}×{m.shape_a[1]} vs "
        f"{m.shape_b[0]}×{m.shape_b[1]}"
        for m in report.mismatched
    ]
    lines.append(f"- difference: {prose(compare_difference_text(report))}")
    lines.append(f"- overlap (top-{report.top_k}): {prose(compare_overlap_text(report))}")
    if s.most_different:
        lines.append("- most different: " + ", ".join(code(n) for n in s.most_different))
    lines += [f"- ⚠️ {prose(w)}" for w in report.warnings]
    lines.append("")
    header = ["layer", "shape", "r A/B", "‖ΔW_A‖F", "‖ΔW_B‖F", "rel Δ", "cos", "k"]
    header += ["overlap out", "overlap in"]
    rows = [
        [
            code(layer.name) + (f" ↔ {code(layer.name_b)}" if layer.name_b else ""),
            f"{layer.shape[0]}×{layer.shape[1]}",
            f"{layer.rank_a}/{layer.rank_b}",
            f"{layer.norm_a:.3g}",
            f"{layer.norm_b:.3g}",
            optional(layer.relative_difference, ".3f"),
            optional(layer.cosine, ".3f"),
            str(layer.k),
            optional(layer.left_overlap, ".3f"),
            optional(layer.right_overlap, ".3f"),
        ]
        for layer in report.layers
    ]
    lines += table(header, rows, right=8)
    lines += ["", f"<sub>{report.tool.name} {report.tool.version}</sub>"]
    return "\n".join(lines) + "\n"
