"""GitHub-flavoured Markdown: for ``$GITHUB_STEP_SUMMARY``, pull-request comments and docs."""

from __future__ import annotations

import re
from collections.abc import Sequence

from lora_audit.render._base_text import (
    BASE_HEADERS,
    INTRUDER_HEADER,
    base_cells,
    base_summary_rows,
    fuse_summary_rows,
    intruder_cell,
)
from lora_audit.render._text import (
    RANK_NOTE,
    SETTING_NAMES,
    adapter_rank_text,
    assumed_scale_text,
    finding_text,
    number,
    policy_source,
    rank_cell,
    retrain_text,
    rule_text,
    scale_sources_text,
    verdict,
)
from lora_audit.render.escape import escaped_report, for_markdown, for_terminal
from lora_audit.report import CheckReport, InspectReport

_ICONS = {"pass": "✅", "fail": "❌", "error": "⚠️"}


def prose(text: str) -> str:
    """Untrusted text as inline Markdown: each ``…``-quoted part as :func:`code`, the rest
    through :func:`for_markdown` (no HTML, link, emphasis or cell boundary comes from it)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: nothing is quoted
        return for_markdown(text)
    return "".join(code(p) if i % 2 else for_markdown(p) for i, p in enumerate(parts))


def code(text: str) -> str:
    """``text`` as inline code: a code span when it holds nothing Markdown or HTML could read,
    else ``<code>`` around the escaped text (a code span cannot escape a backtick or ``|``)."""
    if _PLAIN_CODE.fullmatch(text) and for_terminal(text) == text:
        return f"`{text}`"
    return f"<code>{for_markdown(text)}</code>"


#: Text a code span shows as is (a span strips a space from each end, so none there).
_PLAIN_CODE = re.compile(r"[^`|<>&\\ ]([^`|<>&\\]*[^`|<>&\\ ])?")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: int = 0) -> list[str]:
    """A pipe table; the last ``right`` columns are right-aligned; cells are Markdown already
    (escape untrusted text with :func:`prose` or :func:`code`)."""
    align = ["---"] * (len(header) - right) + ["---:"] * right
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


@escaped_report(for_terminal)
def render_check(report: CheckReport, *, width: int = 100, color: bool = False) -> str:
    """The check report as Markdown; ``width`` and ``color`` are ignored."""
    del width, color
    icon = _ICONS.get(report.status, "")
    lines = [f"## {icon} lora-audit check: {verdict(report)}", ""]
    lines += [
        "Policy "
        + ", ".join(
            f"{code(SETTING_NAMES.get(k, k))} {number(v)}" for k, v in report.policy.items()
        )
        + f" ({prose(policy_source(report))}); rules: "
        + (", ".join(code(rule) for rule in report.rules) or "none"),
        "",
    ]
    summaries = {adapter.adapter.path: adapter.summary for adapter in report.adapters}
    rows = []
    for one in report.verdicts:
        s = summaries.get(one.path)
        if one.status == "unreadable" or s is None:
            rows.append([code(one.path), f"{_ICONS['error']} unreadable", "", "", "", "", ""])
            continue
        rows.append(
            [
                code(one.path),
                f"{_ICONS[one.status]} {one.status}",
                str(s.layer_count),
                str(s.nominal_rank),
                f"{s.wasted_fraction:.1%}",
                "keep" if s.keep_structure else f"r={s.recommended_rank}",
                str(one.findings),
            ]
        )
    header = ["adapter", "status", "layers", "r", "wasted", "retrain at", "findings"]
    lines += table(header, rows, right=5)
    if report.findings:
        lines += ["", "### Findings", ""]
        lines += table(
            ["adapter", "layer", "rule", "measured", "limit", "fix"],
            [
                [
                    code(f.adapter),
                    code(f.layer) if f.layer else "(adapter)",
                    code(f.rule),
                    number(f.measured),
                    number(f.limit),
                    prose(f.fix),
                ]
                for f in report.findings
            ],
        )
        lines += ["", "<details><summary>Messages</summary>", ""]
        lines += [f"- {prose(finding_text(f))}" for f in report.findings]
        lines += ["", "</details>"]
    loud = [(a.adapter.path, text) for a in report.adapters if (text := assumed_scale_text(a))]
    if loud:
        lines += ["", "### ⚠️ Scale assumed", ""]
        lines += [f"- {code(path)}: **{prose(text)}**" for path, text in loud]
    if report.errors:
        lines += ["", "### Unreadable adapters", ""]
        lines += [f"- {prose(e.message)}" for e in report.errors]
    lines += ["", f"<sub>{report.tool.name} {report.tool.version}</sub>"]
    return "\n".join(lines) + "\n"


@escaped_report(for_terminal)
def render_inspect(report: InspectReport, *, width: int = 100, color: bool = False) -> str:
    """The inspect report as Markdown: summary, advice, and one row per layer."""
    del width, color
    a, s = report.adapter, report.summary
    tau = f"{report.settings.energy:g}"
    alpha = f", lora_alpha={a.lora_alpha:g}" if a.lora_alpha is not None else ""
    lines = [
        f"## lora-audit inspect: {code(a.path)}",
        "",
        f"- adapter: {for_markdown(a.format)}, {adapter_rank_text(s, config_rank=a.rank)}{alpha}, "
        f"{for_markdown(', '.join(a.dtypes))}, "
        f"{s.layer_count} layers",
        (
            f"- parameters: {s.params:,}, none of them trained (ΔW = 0 in every layer)"
            if s.advice_verdict == "untrained"
            else f"- parameters: {s.params:,} now → {s.params_after:,} truncated at τ={tau} "
            f"({s.wasted_fraction:.1%} wasted)"
        ),
        f"- retrain: {retrain_text(s)}",
    ]
    rule = rule_text(s)
    if rule is not None and s.advice_verdict != "untrained":
        lines.append(f"- advice rule: {prose(rule)}")
    if any(rank_cell(layer) != str(layer.rank) for layer in report.layers):
        lines.append(f"- r/dD: {RANK_NOTE}")
    if a.scale_sources:
        lines.append(f"- scale from: {scale_sources_text(a.scale_sources)}")
    loud = assumed_scale_text(report)
    if loud is not None:
        lines.append(f"- ⚠️ **{prose(loud)}** (⚠️ in the table)")
    if s.untrained_layers and s.advice_verdict != "untrained":
        lines.append("- untrained: " + ", ".join(code(n) for n in s.untrained_layers))
    lines.append("")
    lines += [f"- {prose(line)}" for line in s.advice]
    lines.append("")
    lines += table(
        ["layer", "shape", "r", "σ₁", "‖ΔW‖F", "stable rank", "eff. rank", f"k@{tau}", "waste"],
        [
            [
                code(layer.name) + (" ⚠️" if layer.scale_source == "assumed" else ""),
                f"{layer.shape[0]}×{layer.shape[1]}",
                rank_cell(layer),
                f"{layer.spectral_norm:.3g}",
                f"{layer.frobenius_norm:.3g}",
                f"{layer.stable_rank:.2f}",
                f"{layer.effective_rank:.2f}",
                str(layer.energy_rank),
                str(layer.wasted_rank),
            ]
            for layer in report.layers
        ],
        right=8,
    )
    lines += _base_section(report)
    return "\n".join(lines) + "\n"


def _base_section(report: InspectReport) -> list[str]:
    """``inspect --base``: the adapter-wide figures, then one row per matched layer."""
    base = report.summary.base
    if base is None:
        return []
    layers = [layer for layer in report.layers if layer.base is not None]
    dora = any(layer.base.update == "dora" for layer in layers if layer.base is not None)
    lines = ["", "### Against the base", ""]
    if dora:
        lines += ["ΔW is DoRA's effective update.", ""]
    lines += [f"- {label}: {prose(text)}" for label, text in base_summary_rows(base)]
    if report.summary.fuse is not None:
        lines += [f"- {label}: {prose(t)}" for label, t in fuse_summary_rows(report.summary.fuse)]
    lines.append("")
    extra = base.intruders is not None
    rows = [
        [code(layer.name), *base_cells(layer.base), *([intruder_cell(layer.base)] if extra else [])]
        for layer in layers
        if layer.base
    ]
    headers = [*BASE_HEADERS, *([INTRUDER_HEADER] if extra else [])]
    lines += table(["layer", *headers], rows, right=len(headers))
    return lines
