"""A full fine-tune as tables: ``inspect --base BASE TUNED`` and ``extract``."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from lora_audit.render.escape import escaped_report, for_terminal
from lora_audit.render.table._blocks import BlockHeaders, block_prefix, block_rows
from lora_audit.render.table._cells import shape
from lora_audit.render.table._layout import (
    Column,
    Grid,
    Row,
    grid_table,
    info_grid,
    title,
    to_text,
)
from lora_audit.report.full_finetune import ExtractReport, FullFinetuneReport

#: How many keys a "listed" row shows before "…".
SHOWN = 4


def _rows(names: list[str]) -> tuple[list[Row], str]:
    prefix = block_prefix(names)
    return [Row(label=label, block=block) for block, label in block_rows(names, prefix=prefix)], (
        prefix
    )


def _keys(keys: tuple[str, ...]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f", … {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def full_grid(report: FullFinetuneReport) -> tuple[Grid, str]:
    """One row per layer: ΔW's σ₁, stable rank, k@τ, and sr(W) → sr(W + ΔW)."""
    layers = report.layers
    rows, prefix = _rows([x.name for x in layers])
    tau = report.settings.energy
    columns = [
        Column(header="shape", cells=[shape(x.shape) for x in layers], drop=2),
        Column(
            header="‖ΔW‖/‖W‖", short="rel", cells=[f"{x.relative_frobenius:.3g}" for x in layers]
        ),
        Column(header="σ₁", cells=[f"{x.spectral_norm:.4g}" for x in layers], drop=1),
        Column(header="sr(ΔW)", cells=[f"{x.stable_rank:.2f}" for x in layers]),
        Column(
            header=f"k@{tau:g}",
            cells=[f"{x.energy_rank}" + ("" if x.energy_rank_exact else "≤") for x in layers],
        ),
        Column(
            header="sr(W) → sr(W+ΔW)",
            short="sr(W)→",
            cells=[f"{x.weight_stable_rank:.2f} → {x.merged_stable_rank:.2f}" for x in layers],
        ),
        Column(
            header="method",
            cells=[x.method + (" (high rank)" if x.high_rank else "") for x in layers],
            drop=3,
        ),
    ]
    return Grid(name="layer", rows=rows, columns=columns), prefix


def full_totals(report: FullFinetuneReport) -> Table:
    """Totals, the tensors without a spectrum, and what was not audited."""
    s = report.summary
    info = info_grid()
    info.add_row(
        "layers",
        f"{s.changed_layers} of {s.layer_count} changed; {len(s.high_rank_layers)} high rank; "
        + ", ".join(f"{n} {m}" for m, n in sorted(s.methods.items())),
    )
    info.add_row(
        "stable rank",
        f"ΔW mean {s.mean_stable_rank:.2f} (max {s.max_stable_rank:.2f}); W mean "
        f"{s.mean_weight_stable_rank:.2f}; W + ΔW mean {s.mean_merged_stable_rank:.2f}",
    )
    info.add_row(
        "size",
        f"‖ΔW‖F/‖W‖F = {s.total_relative_frobenius:.4g}; a LoRA at k@τ: "
        f"{s.params_at_rank:,} of {s.params:,} parameters",
    )
    info.add_row("certified", f"every σᵢ to {s.max_bound:.1e} relative (worst layer)")
    by_kind: dict[str, list[str]] = {}
    for t in report.tensors:
        by_kind.setdefault(t.kind, []).append(t.key)
    for kind, names in sorted(by_kind.items()):
        changed = sum(1 for t in report.tensors if t.kind == kind and t.changed)
        info.add_row(
            f"{kind}s", f"{changed} of {len(names)} changed (no spectrum): {_keys(tuple(names))}"
        )
    for label, keys in (
        ("only in TUNED", s.only_in_tuned),
        ("only in base", s.only_in_base),
        ("not compared", s.mismatched),
    ):
        if keys:
            info.add_row(label, f"{len(keys)}: {_keys(keys)}")
    return info


@escaped_report(for_terminal)
def render_full(report: FullFinetuneReport, *, width: int = 100, color: bool = False) -> str:
    """Per layer the spectrum of ΔW and the stable ranks of W and W + ΔW; then the totals."""
    headers = BlockHeaders()
    grid, prefix = full_grid(report)
    text = f"{report.tuned} − {report.base} · τ = {report.settings.energy:g}"
    parts = (
        title(text + (f" · names start with {prefix}" if prefix else ""), width=width),
        grid_table(grid, width=width, headers=headers),
        full_totals(report),
    )
    return headers.expand(to_text(Group(*parts), width=width, color=color), width=width)


@escaped_report(for_terminal)
def render_extract(report: ExtractReport, *, width: int = 100, color: bool = False) -> str:
    """Per layer the rank written and its exact error; then what else was carried."""
    headers = BlockHeaders()
    layers = report.layers
    rows, prefix = _rows([x.name for x in layers])
    columns = [
        Column(header="shape", cells=[shape(x.shape) for x in layers], drop=2),
        Column(header="rank", cells=[str(x.rank) for x in layers]),
        Column(header="energy kept", short="kept", cells=[f"{x.energy_kept:.4f}" for x in layers]),
        Column(
            header="optimal error",
            short="optimum",
            cells=[f"{x.optimal_error:.4g}" for x in layers],
            drop=1,
        ),
        Column(header="error", cells=[f"{x.error:.4g}" for x in layers]),
    ]
    grid = Grid(name="layer", rows=rows, columns=columns)
    info = info_grid()
    info.add_row("written", f"{report.output} ({report.output_format}, {report.selection})")
    info.add_row(
        "error",
        f"‖ΔW − BA‖F/‖ΔW‖F: model {report.total_error:.4g}, worst layer {report.max_error:.4g}",
    )
    info.add_row("parameters", f"{report.params:,}")
    for how in ("modules_to_save", "lora_bias", "not-carried"):
        keys = tuple(c.key for c in report.carried if c.how == how)
        if keys:
            info.add_row(how, f"{len(keys)}: {_keys(keys)}")
    if report.unchanged:
        info.add_row("unchanged", f"{len(report.unchanged)}: {_keys(report.unchanged)}")
    text = f"{report.tuned} − {report.base} → {report.output}"
    parts = (
        title(text + (f" · names start with {prefix}" if prefix else ""), width=width),
        grid_table(grid, width=width, headers=headers),
        info,
    )
    return headers.expand(to_text(Group(*parts), width=width, color=color), width=width)
