"""The ``merge`` table: per layer Σr → k, which inputs, energy kept and error; then totals."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from lora_audit.render.escape import escaped_report, for_terminal
from lora_audit.render.table import _to_text, common_prefix, layer_table_frame
from lora_audit.report.merge import MergeReport


def _rule(report: MergeReport) -> str:
    s = report.settings
    if s.value is None:
        return "concat (lossless)"
    value = f"{s.value:,.0f}" if s.mode == "budget" else f"{s.value:g}"  # not 2e+06
    if s.max_rank is not None:
        return f"{s.mode} {value}, ranks in [{s.min_rank}, {s.max_rank}]"
    return f"{s.mode} {value}" + (f", ranks ≥ {s.min_rank}" if s.min_rank > 1 else "")


@escaped_report(for_terminal)
def render_merge(report: MergeReport, *, width: int = 100, color: bool = False) -> str:
    """Inputs with their weights, a row per merged layer, then totals and the output."""
    names = [layer.name for layer in report.layers]
    prefix = common_prefix(names)
    inputs = " + ".join(f"{x.weight:g}·[{i}]" for i, x in enumerate(report.inputs))
    title = f"merge {inputs} → {report.output or '(dry run)'} · {_rule(report)}"
    if prefix:
        title += f" · {prefix}…"
    table = layer_table_frame(
        title, numbers=("shape", "inputs", "Σr → k", "energy kept", "rel. error", "params")
    )
    everyone = tuple(range(len(report.inputs)))
    for layer in report.layers:
        table.add_row(
            layer.name.removeprefix(prefix),
            f"{layer.shape[0]}×{layer.shape[1]}",
            "all" if layer.inputs == everyone else ",".join(str(i) for i in layer.inputs),
            f"{layer.rank} → {layer.new_rank}",
            f"{layer.energy_kept:.4f}",
            f"{layer.relative_error:.4f}",
            f"{layer.params:,} → {layer.params_after:,}",
        )
    t = report.summary
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    for i, x in enumerate(report.inputs):
        info.add_row(f"[{i}]", f"{x.path} ({x.format}, {x.layer_count} layers) × {x.weight:g}")
    partial = f"; {t.partial_layers} in only some inputs" if t.partial_layers else ""
    info.add_row("layers", f"{t.layer_count} merged{partial}")
    info.add_row("parameters", f"{t.params:,} in the inputs → {t.params_after:,}")
    info.add_row(
        "error",
        f"vs the exact weighted sum: ‖ΔW − ΔW_k‖F/‖ΔW‖F = {t.relative_error:.4f}; worst layer "
        f"{t.max_relative_error:.4f}; min energy kept {t.min_energy_kept:.4f}",
    )
    after = (
        "(dry run: nothing written)" if t.file_bytes_after is None else f"{t.file_bytes_after:,}"
    )
    info.add_row("file", f"{t.file_bytes:,} bytes in → {after} bytes out")
    if report.dropped_extras:
        shown = ", ".join(report.dropped_extras[:3])
        more = len(report.dropped_extras) - 3
        info.add_row("dropped", shown + (f" … ({more} more)" if more > 0 else ""))
    assumed = sum(x.scale_sources.get("assumed", 0) for x in report.inputs)
    if assumed:
        info.add_row(
            Text("ASSUMED", style="bold red"),
            Text(
                f"scale assumed for {assumed} input layer(s) (nothing in the file gives it): "
                "the output bakes that guess into its factors",
                style="bold red",
            ),
        )
    if report.output and not report.dry_run:
        info.add_row("written", f"{report.output} ({report.output_format})")
    return _to_text(Group(table, info), width=width, color=color)
