"""Rich tables for people: one row per layer, then the summary and the advice."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from lora_audit.report import CheckReport, CompressReport, InspectReport, LayerReport

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 12


def sparkline(values: Sequence[float], *, width: int = SPARK_WIDTH) -> str:
    """Bars for ``values / max(values)``; longer spectra are bucketed by their maximum."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [
            max(values[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)])
            for i in range(width)
        ]
    top = max(values)
    if top <= 0:
        return " " * len(values)
    return "".join(
        " " if v <= 0 else SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))]
        for v in values
    )


def common_prefix(names: Sequence[str]) -> str:
    """The longest shared prefix of the names that ends at a ``.`` or ``_`` boundary."""
    if len(names) < 2:
        return ""
    prefix = os.path.commonprefix(list(names))  # noqa: RUF071 (character-wise is intended)
    return prefix[: max(prefix.rfind("."), prefix.rfind("_")) + 1]


def _num(x: float) -> str:
    return f"{x:.3g}"


def _to_text(renderable: RenderableType, *, width: int, color: bool) -> str:
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        no_color=not color,
        highlight=False,
        emoji=False,
    )
    console.print(renderable)
    return buffer.getvalue()


def layer_table(report: InspectReport) -> Table:
    """The per-layer table; the scale column appears only when layers differ in scale."""
    names = [layer.name for layer in report.layers]
    prefix = common_prefix(names)
    tau = f"{report.settings.energy:g}"
    scales = {layer.scale for layer in report.layers}
    show_scale = len(scales) > 1
    title = f"{report.adapter.path} · {len(names)} layers"
    if not show_scale and scales:
        title += f" · scale {next(iter(scales)):.3g}"
    if prefix:
        title += f" · {prefix}…"
    table = Table(
        title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True
    )
    table.add_column("layer", overflow="fold", min_width=20, ratio=1)
    table.add_column("shape", justify="right", no_wrap=True)
    table.add_column("r", justify="right", no_wrap=True)
    if show_scale:
        table.add_column("scale", justify="right", no_wrap=True)
    table.add_column("σ spectrum", no_wrap=True)
    for header in ("σ₁", "‖ΔW‖F", "sr", "erank", f"k@{tau}", "waste"):
        table.add_column(header, justify="right", no_wrap=True)
    current = None
    for layer in report.layers:
        group, label = split_block(layer.name.removeprefix(prefix))
        if group and group != current:
            table.add_row(Text(group, style="bold"))
        current = group
        table.add_row(*_row(layer, label=("  " if group else "") + label, show_scale=show_scale))
    return table


_BLOCK = re.compile(r"^(.*[._]\d+[._])(.+)$")


def split_block(name: str) -> tuple[str, str]:
    """Split a layer name after its last numbered segment: ``("model.layers.3.", "mlp.up")``.

    The table prints each block once, then the short names under it, so that long module
    paths fit in 100 columns; the JSON report keeps the full names.
    """
    match = _BLOCK.match(name)
    return (match[1], match[2]) if match else ("", name)


def _row(layer: LayerReport, *, label: str, show_scale: bool) -> list[str | Text]:
    heavy = layer.wasted_rank * 2 > layer.rank
    waste = Text(str(layer.wasted_rank), style="bold red" if heavy else "")
    k = Text(str(layer.energy_rank), style="yellow" if layer.untrained else "bold")
    cells: list[str | Text] = [
        label,
        f"{layer.shape[0]}×{layer.shape[1]}",
        str(layer.rank),
    ]
    if show_scale:
        cells.append(f"{layer.scale:.3g}")
    cells += [
        Text(sparkline(layer.singular_values), style="cyan"),
        _num(layer.spectral_norm),
        _num(layer.frobenius_norm),
        f"{layer.stable_rank:.2f}",
        f"{layer.effective_rank:.2f}",
        k,
        waste,
    ]
    return cells


def summary_table(report: InspectReport) -> Table:
    """Totals, the retraining plan and the biggest wasters."""
    s = report.summary
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    a = report.adapter
    alpha = f", lora_alpha={a.lora_alpha:g}" if a.lora_alpha is not None else ""
    flags = "".join(
        f", {flag}" for flag, on in (("rsLoRA", a.use_rslora), ("DoRA", a.use_dora)) if on
    )
    info.add_row("adapter", f"{a.format}, r={s.nominal_rank}{alpha}{flags}, {', '.join(a.dtypes)}")
    if a.base_model:
        info.add_row("base model", a.base_model)
    if a.metadata:
        info.add_row("metadata", ", ".join(f"{k}={v}" for k, v in a.metadata.items()))
    info.add_row("stable rank", f"mean {s.mean_stable_rank:.2f}, max {s.max_stable_rank:.2f}")
    info.add_row(
        "parameters",
        f"{s.params:,} now → {s.params_after:,} truncated at τ={report.settings.energy:g} "
        f"({s.wasted_fraction:.1%} wasted)",
    )
    plan = f"r={s.recommended_rank}"
    if s.lora_alpha is not None:
        plan += f", lora_alpha={s.lora_alpha:g}"
    info.add_row("retrain", f"{plan} ({s.params_retrain:,} parameters)")
    if s.rank_pattern:
        info.add_row("rank_pattern", json.dumps(s.rank_pattern))
    if s.alpha_pattern:
        info.add_row("alpha_pattern", json.dumps(s.alpha_pattern))
    if s.top_wasters:
        info.add_row("most waste", ", ".join(s.top_wasters))
    if s.untrained_layers:
        info.add_row("untrained", ", ".join(s.untrained_layers))
    if a.modules_to_save:
        info.add_row("not audited", "modules_to_save: " + ", ".join(a.modules_to_save))
    return info


def render_inspect(report: InspectReport, *, width: int = 100, color: bool = False) -> str:
    """The full human-readable inspect report."""
    advice = Text("\n".join(f"→ {line}" for line in report.summary.advice), style="green")
    return _to_text(
        Group(layer_table(report), summary_table(report), Text(""), advice),
        width=width,
        color=color,
    )


_STATUS_STYLE = {"pass": "bold green", "fail": "bold red", "error": "bold yellow"}


def render_check(report: CheckReport, *, width: int = 100, color: bool = False) -> str:
    """The check report: one row per adapter, then the findings, the errors and the verdict."""
    from lora_audit.render._text import number, policy_values, verdict

    adapters = Table(title="lora-audit check", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    adapters.add_column("adapter", overflow="fold", ratio=1)
    adapters.add_column("status", no_wrap=True)
    adapters.add_column("layers", justify="right")
    adapters.add_column("r", justify="right")
    adapters.add_column(f"wasted@{report.policy.get('energy', 0):g}", justify="right")
    adapters.add_column("retrain", justify="right", no_wrap=True)
    adapters.add_column("findings", justify="right")
    for inspect in report.adapters:
        s = inspect.summary
        found = len(report.findings_for(inspect.adapter.path))
        status = "fail" if found else "pass"
        adapters.add_row(
            inspect.adapter.path,
            Text(status, style=_STATUS_STYLE[status]),
            str(s.layer_count),
            str(s.nominal_rank),
            f"{s.wasted_fraction:.1%}",
            f"r={s.recommended_rank}",
            str(found),
        )
    for error in report.errors:
        adapters.add_row(
            error.path, Text("unreadable", style=_STATUS_STYLE["error"]), "", "", "", "", ""
        )
    parts: list[RenderableType] = [adapters]
    if report.findings:
        findings = Table.grid(padding=(0, 1))
        findings.add_column(no_wrap=True)
        findings.add_column(overflow="fold")
        for f in report.findings:
            where = f"{f.adapter} · {f.layer}" if f.layer else f.adapter
            body = Text.assemble(
                (where, "bold"),
                " · ",
                (f.rule, "red"),
                f" · measured {number(f.measured)}, limit {number(f.limit)}\n",
                f.message,
                "\n",
                ("fix: ", "green"),
                f.fix,
            )
            findings.add_row(Text("✗", style="red"), body)
        parts += [Text("findings", style="bold"), findings, Text("")]
    for error in report.errors:
        parts.append(Text(f"✗ {error.message}", style="yellow"))
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column(overflow="fold")
    info.add_row("policy", policy_values(report))
    info.add_row("policy file", report.policy_file or "none (defaults and flags)")
    info.add_row("rules", ", ".join(report.rules) or "none")
    parts.append(info)
    parts.append(Text(verdict(report), style=_STATUS_STYLE.get(report.status, "")))
    return _to_text(Group(*parts), width=width, color=color)


def render_compress(report: CompressReport, *, width: int = 100, color: bool = False) -> str:
    """Per layer old r → new k, energy kept and error; then totals and file sizes."""
    names = [layer.name for layer in report.layers]
    prefix = common_prefix(names)
    s = report.settings
    rule = f"{s.mode} {s.value:g}" + (
        f", ranks in [{s.min_rank}, {s.max_rank}]" if s.max_rank is not None else ""
    )
    title = f"{report.adapter.path} → {report.output or '(dry run)'} · {rule}"
    if prefix:
        title += f" · {prefix}…"
    table = Table(
        title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True
    )
    table.add_column("layer", overflow="fold", min_width=20, ratio=1)
    table.add_column("shape", justify="right", no_wrap=True)
    table.add_column("r → k", justify="right", no_wrap=True)
    table.add_column("energy kept", justify="right", no_wrap=True)
    table.add_column("rel. error", justify="right", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    for layer in report.layers:
        change = (
            f"{layer.rank} → {layer.new_rank}"
            if layer.action == "truncated"
            else (f"{layer.rank} (kept)")
        )
        table.add_row(
            layer.name.removeprefix(prefix),
            f"{layer.shape[0]}×{layer.shape[1]}",
            change,
            f"{layer.energy_kept:.4f}",
            f"{layer.relative_error:.4f}",
            f"{layer.params:,} → {layer.params_after:,}",
        )
    t = report.summary
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    saved = 1 - t.params_after / t.params if t.params else 0.0
    info.add_row("layers", f"{t.truncated} of {t.layer_count} truncated")
    info.add_row("parameters", f"{t.params:,} → {t.params_after:,} ({saved:.1%} fewer)")
    info.add_row(
        "error",
        f"adapter ‖ΔW − ΔW_k‖F/‖ΔW‖F = {t.relative_error:.4f}; worst layer "
        f"{t.max_relative_error:.4f}; min energy kept {t.min_energy_kept:.4f}",
    )
    after = (
        "(dry run: nothing written)"
        if t.file_bytes_after is None
        else (f"{t.file_bytes_after:,} bytes")
    )
    info.add_row("file", f"{t.file_bytes:,} bytes → {after}")
    if report.output and not report.dry_run:
        info.add_row("written", f"{report.output} ({report.output_format})")
    return _to_text(Group(table, info), width=width, color=color)
