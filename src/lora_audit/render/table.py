"""Rich tables for people: one row per layer, then the summary and the advice."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator, Sequence

from rich import box
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from lora_audit.render._base_text import BASE_HEADERS, base_cells, base_summary_rows
from lora_audit.render._text import (
    RANK_NOTE,
    adapter_rank_text,
    assumed_scale_text,
    rank_cell,
    retrain_text,
    scale_sources_text,
)
from lora_audit.render.escape import escaped_report, for_terminal
from lora_audit.report import (
    CheckReport,
    CompareReport,
    CompressReport,
    InspectReport,
    LayerReport,
    TrendReport,
)

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
        markup=False,  # untrusted names are never console markup
        highlight=False,
        emoji=False,
    )
    console.print(renderable)
    return buffer.getvalue()


def layer_table_frame(title: str, *, numbers: Sequence[str] = ()) -> Table:
    """An empty per-layer table: compact, a wrapping ``layer`` column first, then one
    right-aligned, non-wrapping column per header in ``numbers``."""
    table = Table(
        title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True
    )
    table.add_column("layer", overflow="fold", min_width=20, ratio=1)
    for header in numbers:
        table.add_column(header, justify="right", no_wrap=True)
    return table


def layer_table(report: InspectReport, *, headers: BlockHeaders | None = None) -> Table:
    """The per-layer table; the scale column appears only when layers differ in scale."""
    names = [layer.name for layer in report.layers]
    prefix = common_prefix(names)
    tau = f"{report.settings.energy:g}"
    scales = {layer.scale for layer in report.layers}
    show_scale = len(scales) > 1
    title = f"{report.adapter.path} · {len(names)} layers"
    sources = {layer.scale_source for layer in report.layers}
    if not show_scale and scales:
        title += f" · scale {next(iter(scales)):.3g}"
        title += " (ASSUMED)" if sources == {"assumed"} else ""
    mark = len(sources) > 1  # mark the assumed rows only when the others' scales are known
    if prefix:
        title += f" · {prefix}…"
    table = layer_table_frame(
        title,
        numbers=(
            "shape",
            "r",
        ),
    )
    if show_scale:
        table.add_column("scale", justify="right", no_wrap=True)
    table.add_column("σ spectrum", no_wrap=True)
    for header in ("σ₁", "‖ΔW‖F", "sr", "erank", f"k@{tau}", "waste"):
        table.add_column(header, justify="right", no_wrap=True)
    for layer, (block, label) in zip(report.layers, block_rows(names, prefix=prefix), strict=True):
        if block is not None:
            table.add_row(_block_cell(block, headers))
        assumed = mark and layer.scale_source == "assumed"
        table.add_row(*_row(layer, label=label, show_scale=show_scale, assumed=assumed))
    return table


_BLOCK = re.compile(r"^(.*[._]\d+[._])(.+)$")


def split_block(name: str) -> tuple[str, str]:
    """Split a layer name after its last numbered segment: ``("model.layers.3.", "mlp.up")``.

    The table prints each block once, then the short names under it, so that long module
    paths fit in 100 columns; the JSON report keeps the full names.
    """
    match = _BLOCK.match(name)
    return (match[1], match[2]) if match else ("", name)


def block_rows(names: Sequence[str], *, prefix: str) -> Iterator[tuple[str | None, str]]:
    """For each name: the block to print before its row (``None`` when it is the same block as
    the row before) and the row's label, indented under a block."""
    current = None
    for name in names:
        group, label = split_block(name.removeprefix(prefix))
        yield (group if group and group != current else None), ("  " if group else "") + label
        current = group


#: Private-use characters stand for block rows until :meth:`BlockHeaders.expand` (one cell each,
#: so rich can crop a squeezed column but never split one).
_FIRST_MARK, _LAST_MARK = 0xE000, 0xF8FF
_MARK = re.compile(f"[{chr(_FIRST_MARK)}-{chr(_LAST_MARK)}]")
_BREAK = re.compile(r"(?<=[._])")


class BlockHeaders:
    """Block rows printed across the whole width of a table, not folded inside its first column.

    A per-layer table prints each numbered block once (``model.layers.3.``) above the short
    names in it. In the ``layer`` column, a long block such as kohya's
    ``unet_down_blocks_0_attentions_0_transformer_blocks_0_`` would be folded over several
    lines mid-word. Here the row holds a short placeholder while rich lays the table out, and
    :meth:`expand` writes the block over the rendered row, into the empty cells beside it
    (folded at ``.``/``_`` boundaries only if it is wider than the whole table).
    """

    def __init__(self) -> None:
        self._names: list[str] = []

    def cell(self, name: str) -> Text:
        """The first cell of the row for block ``name``."""
        if _FIRST_MARK + len(self._names) > _LAST_MARK:  # 6,400 blocks: print the rest in place
            return Text(name, style="bold")
        self._names.append(name)
        return Text(chr(_FIRST_MARK + len(self._names) - 1), style="bold")

    def expand(self, text: str, *, width: int) -> str:
        """``text`` (rendered) with every placeholder replaced by its block name."""
        if not self._names:
            return text
        out: list[str] = []
        for line in text.split("\n"):
            match = _MARK.search(line)
            if match is None:
                out.append(line)
                continue
            head, tail = line[: match.start()], line[match.end() :]
            index, before = ord(match[0]) - _FIRST_MARK, Text.from_ansi(head).plain
            if index >= len(self._names) or before.strip():
                out.append(line)  # not a block row: a name that holds such a character
                continue
            for part in _fold(self._names[index], width - cell_len(before)):
                out.append(head + part + _shorten(tail, cell_len(part) - 1))
        return "\n".join(out)


def _shorten(tail: str, cells: int) -> str:
    """``tail`` (the rest of a rendered line) with up to ``cells`` padding spaces removed: first
    those right after the block's cell (inside its style), then those at the end of the line."""
    lead = min(len(tail) - len(tail.lstrip(" ")), max(cells, 0))
    tail = tail[lead:]
    end = min(len(tail) - len(tail.rstrip(" ")), max(cells - lead, 0))
    return tail[: len(tail) - end]


def _fold(name: str, width: int) -> list[str]:
    """``name`` in pieces of at most ``width`` cells, broken after ``.`` or ``_`` if possible."""
    if cell_len(name) <= width or width < 8:
        return [name]
    parts: list[str] = []
    line = ""
    for piece in _BREAK.split(name):
        if line and cell_len(line + piece) > width:
            parts.append(line)
            line = ""
        line += piece
    parts.append(line)
    return parts


def _block_cell(name: str, headers: BlockHeaders | None) -> Text:
    return headers.cell(name) if headers is not None else Text(name, style="bold")


def _row(
    layer: LayerReport, *, label: str, show_scale: bool, assumed: bool = False
) -> list[str | Text]:
    heavy = layer.wasted_params * 2 > layer.params
    waste = Text(str(layer.wasted_rank), style="bold red" if heavy else "")
    k = Text(str(layer.energy_rank), style="yellow" if layer.untrained else "bold")
    cells: list[str | Text] = [
        Text.assemble(label, (" *", "bold red")) if assumed else label,
        f"{layer.shape[0]}×{layer.shape[1]}",
        rank_cell(layer),
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
    info.add_row(
        "adapter", f"{a.format}, {adapter_rank_text(s)}{alpha}{flags}, {', '.join(a.dtypes)}"
    )
    if a.base_model:
        info.add_row("base model", a.base_model)
    if a.metadata:
        info.add_row("metadata", ", ".join(f"{k}={v}" for k, v in a.metadata.items()))
    if a.scale_sources:
        info.add_row("scale from", scale_sources_text(a.scale_sources))
    loud = assumed_scale_text(report)
    if loud is not None:
        marked = " (* in the table)" if len(a.scale_sources) > 1 else ""
        info.add_row(Text("ASSUMED", style="bold red"), Text(loud + marked, style="bold red"))
    info.add_row("stable rank", f"mean {s.mean_stable_rank:.2f}, max {s.max_stable_rank:.2f}")
    info.add_row(
        "parameters",
        f"{s.params:,} now → {s.params_after:,} truncated at τ={report.settings.energy:g} "
        f"({s.wasted_fraction:.1%} wasted)",
    )
    info.add_row("retrain", retrain_text(s))
    if s.rank_pattern:
        info.add_row("rank_pattern", json.dumps(s.rank_pattern))
    if s.alpha_pattern:
        info.add_row("alpha_pattern", json.dumps(s.alpha_pattern))
    if any(rank_cell(layer) != str(layer.rank) for layer in report.layers):
        info.add_row("r/dD", RANK_NOTE)
    if s.top_wasters:
        info.add_row("most waste", ", ".join(s.top_wasters))
    if s.untrained_layers:
        info.add_row("untrained", ", ".join(s.untrained_layers))
    if a.modules_to_save:
        info.add_row("not audited", "modules_to_save: " + ", ".join(a.modules_to_save))
    return info


@escaped_report(for_terminal)
def render_inspect(report: InspectReport, *, width: int = 100, color: bool = False) -> str:
    """The full human-readable inspect report."""
    advice = Text("\n".join(f"→ {line}" for line in report.summary.advice), style="green")
    headers = BlockHeaders()
    parts = (layer_table(report, headers=headers), summary_table(report))
    base = base_parts(report, headers=headers)
    text = _to_text(Group(*parts, *base, Text(""), advice), width=width, color=color)
    return headers.expand(text, width=width)


_STATUS_STYLE = {"pass": "bold green", "fail": "bold red", "error": "bold yellow"}


@escaped_report(for_terminal)
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
            "keep" if s.keep_structure else f"r={s.recommended_rank}",
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
    for inspect in report.adapters:
        loud = assumed_scale_text(inspect)
        if loud is not None:
            parts.append(Text(f"! {inspect.adapter.path}: {loud}", style="bold red"))
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column(overflow="fold")
    info.add_row("policy", policy_values(report))
    info.add_row("policy file", report.policy_file or "none (defaults and flags)")
    info.add_row("rules", ", ".join(report.rules) or "none")
    parts.append(info)
    parts.append(Text(verdict(report), style=_STATUS_STYLE.get(report.status, "")))
    return _to_text(Group(*parts), width=width, color=color)


@escaped_report(for_terminal)
def render_compress(report: CompressReport, *, width: int = 100, color: bool = False) -> str:
    """Per layer old r → new k, energy kept and error; then totals and file sizes."""
    names = [layer.name for layer in report.layers]
    prefix = common_prefix(names)
    s = report.settings
    value = f"{s.value:,.0f}" if s.mode == "budget" else f"{s.value:g}"  # not 2e+06
    rule = f"{s.mode} {value}" + (
        f", ranks in [{s.min_rank}, {s.max_rank}]"
        if s.max_rank is not None
        else (f", ranks ≥ {s.min_rank}" if s.min_rank > 1 else "")
    )
    title = f"{report.adapter.path} → {report.output or '(dry run)'} · {rule}"
    if prefix:
        title += f" · {prefix}…"
    table = layer_table_frame(
        title,
        numbers=(
            "shape",
            "r → k",
            "energy kept",
            "rel. error",
            "params",
        ),
    )
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
    assumed = report.adapter.scale_sources.get("assumed", 0)
    if assumed:
        info.add_row(
            Text("ASSUMED", style="bold red"),
            Text(
                f"scale assumed for {assumed} of {t.layer_count} layers (nothing in the input "
                "gives it): the output bakes that guess into its factors",
                style="bold red",
            ),
        )
    if report.output and not report.dry_run:
        info.add_row("written", f"{report.output} ({report.output_format})")
    return _to_text(Group(table, info), width=width, color=color)


def block_prefix(names: Sequence[str]) -> str:
    """:func:`common_prefix`, cut back so that no name loses the start of a numbered block."""
    prefix = common_prefix(names)
    while prefix and any(name[len(prefix) : len(prefix) + 1].isdigit() for name in names):
        body = prefix[:-1]
        prefix = prefix[: max(body.rfind("."), body.rfind("_")) + 1]
    return prefix


def _listed(names: Sequence[str], *, limit: int = 6) -> str:
    """Up to ``limit`` names, then how many more."""
    shown = ", ".join(names[:limit])
    more = len(names) - limit
    return f"{shown} … ({more} more in --format json)" if more > 0 else shown


def _trend_spark(values: Sequence[float | int | None]) -> str:
    """Bars from the series' minimum to its maximum (flat when constant; blank when missing)."""
    known = [float(v) for v in values if v is not None]
    if not known:
        return " " * len(values)
    low, high = min(known), max(known)
    span = high - low
    cells = []
    for v in values:
        if v is None:
            cells.append(" ")
        elif span <= 0:
            cells.append(SPARK[len(SPARK) // 2])
        else:
            cells.append(
                SPARK[min(len(SPARK) - 1, int((float(v) - low) / span * (len(SPARK) - 1) + 0.5))]
            )
    return "".join(cells)


def _ends(values: Sequence[float | int | None], fmt: str) -> str:
    """``first → last`` of the known values of a series."""
    known = [v for v in values if v is not None]
    if not known:
        return "–"
    if len(known) == 1:
        return format(known[0], fmt)
    return f"{format(known[0], fmt)} → {format(known[-1], fmt)}"


def _common_directory(paths: Sequence[str]) -> str:
    """The directory (ending in ``/``) that all the paths share, or ``""``."""
    if len(paths) < 2:
        return ""
    prefix = os.path.commonprefix(list(paths))  # noqa: RUF071 (character-wise is intended)
    return prefix[: prefix.rfind("/") + 1]


def _step_word(unit: str) -> str:
    return {"step": "step", "epoch": "epoch", "order": "#"}.get(unit, "n")


@escaped_report(for_terminal)
def render_trend(report: TrendReport, *, width: int = 100, color: bool = False) -> str:
    """Checkpoints in step order, then each layer's stable rank, energy rank and norm over them."""
    s = report.settings
    tau = f"{s.energy:g}"
    word = _step_word(s.step_unit)
    checkpoints = report.checkpoints
    title = f"lora-audit trend · {len(checkpoints)} checkpoints"
    if checkpoints:
        plural = {"step": "steps", "epoch": "epochs"}.get(s.step_unit, word)
        title += f" · {plural} {checkpoints[0].step}–{checkpoints[-1].step}"
    where = _common_directory([c.path for c in checkpoints])
    if where:
        title += f" · {where}"
    runs = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    runs.add_column(word, justify="right", no_wrap=True)
    runs.add_column("checkpoint", overflow="fold", ratio=1)
    runs.add_column("layers", justify="right")
    runs.add_column("r", justify="right")
    runs.add_column("mean sr", justify="right", no_wrap=True)
    runs.add_column("max sr", justify="right", no_wrap=True)
    runs.add_column(f"mean k@{tau}", justify="right", no_wrap=True)
    runs.add_column("‖ΔW‖F", justify="right", no_wrap=True)
    runs.add_column("wasted", justify="right", no_wrap=True)
    for c in checkpoints:
        runs.add_row(
            str(c.step),
            c.path.removeprefix(where) or c.path,
            str(c.layer_count),
            str(c.rank),
            f"{c.mean_stable_rank:.2f}",
            f"{c.max_stable_rank:.2f}",
            f"{c.mean_energy_rank:.2f}",
            _num(c.frobenius_norm),
            f"{c.wasted_fraction:.1%}",
        )
    names = [layer.name for layer in report.layers]
    prefix = block_prefix(names)
    layers = layer_table_frame(
        f"per layer, in {word} order" + (f" · {prefix}…" if prefix else ""),
        numbers=(
            "shape",
            "r",
        ),
    )
    layers.add_column("sr", no_wrap=True)
    layers.add_column("stable rank", justify="right", no_wrap=True)
    layers.add_column("k", no_wrap=True)
    layers.add_column(f"k@{tau}", justify="right", no_wrap=True)
    layers.add_column("‖ΔW‖F", justify="right", no_wrap=True)
    layers.add_column("drift", no_wrap=True)
    headers = BlockHeaders()
    for layer, (block, label) in zip(report.layers, block_rows(names, prefix=prefix), strict=True):
        if block is not None:
            layers.add_row(headers.cell(block))
        marks = " ".join({"stable_rank": "sr", "energy_rank": "k"}[m] for m in layer.drift)
        layers.add_row(
            label,
            f"{layer.shape[0]}×{layer.shape[1]}",
            str(layer.rank),
            Text(_trend_spark(layer.stable_rank), style="cyan"),
            _ends(layer.stable_rank, ".2f"),
            Text(_trend_spark(layer.energy_rank), style="cyan"),
            _ends(layer.energy_rank, "d"),
            _ends(layer.frobenius_norm, ".3g"),
            Text(f"↑ {marks}" if marks else "", style="bold red"),
        )
    parts: list[RenderableType] = [runs, layers]
    if report.findings:
        findings = Table.grid(padding=(0, 1))
        findings.add_column(no_wrap=True)
        findings.add_column(overflow="fold")
        for f in report.findings:
            body = Text.assemble(
                (f.layer or "(adapter)", "bold"),
                " · ",
                (f.rule, "red" if f.severity == "error" else "yellow"),
                " · ",
                f.message,
            )
            findings.add_row(Text("↑", style="red"), body)
        parts += [Text("drift", style="bold"), findings, Text("")]
        parts.append(Text(f"fix: {report.findings[0].fix}", style="green"))
    rule = (
        f"drift = never falling over the last {s.window} checkpoints and rising by more than "
        f"{s.min_rise:.0%}"
    )
    parts.append(Text(rule, style="dim"))
    parts.append(
        Text(_trend_verdict(report), style="bold red" if report.findings else "bold green")
    )
    return headers.expand(_to_text(Group(*parts), width=width, color=color), width=width)


def _trend_verdict(report: TrendReport) -> str:
    flagged = [layer for layer in report.layers if layer.drift]
    if not report.findings:
        return f"PASS: no series keeps rising over the last {report.settings.window} checkpoints"
    adapter = [f for f in report.findings if f.layer is None]
    parts = [f"{len(flagged)} layer(s) keep rising"]
    if adapter:
        parts.append(
            "and so does the adapter's mean "
            + " and ".join(
                "stable rank" if f.rule == "stable-rank-drift" else "energy rank" for f in adapter
            )
        )
    return "DRIFT: " + " ".join(parts)


def _opt(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


@escaped_report(for_terminal)
def render_compare(report: CompareReport, *, width: int = 100, color: bool = False) -> str:
    """Per matched layer: norms, relative difference, cosine and subspace overlaps."""
    names = [layer.name for layer in report.layers]
    prefix = block_prefix(names)
    title = f"{report.adapter_a.path} vs {report.adapter_b.path} · top-{report.top_k} subspaces"
    if prefix:
        title += f" · {prefix}…"
    table = layer_table_frame(
        title,
        numbers=(
            "shape",
            "r A/B",
            "‖ΔW_A‖F",
            "‖ΔW_B‖F",
            "rel Δ",
            "cos",
            "k",
            "ov. out",
            "ov. in",
        ),
    )
    headers = BlockHeaders()
    for layer, (block, label) in zip(report.layers, block_rows(names, prefix=prefix), strict=True):
        if block is not None:
            table.add_row(headers.cell(block))
        table.add_row(
            label,
            f"{layer.shape[0]}×{layer.shape[1]}",
            f"{layer.rank_a}/{layer.rank_b}",
            _num(layer.norm_a),
            _num(layer.norm_b),
            _opt(layer.relative_difference, ".3f"),
            _opt(layer.cosine, ".3f"),
            str(layer.k),
            _opt(layer.left_overlap, ".3f"),
            _opt(layer.right_overlap, ".3f"),
        )
    s = report.summary
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold", no_wrap=True)
    info.add_column(overflow="fold")
    for label, a in (("A", report.adapter_a), ("B", report.adapter_b)):
        rank = f", r={a.rank}" if a.rank is not None else ""
        info.add_row(label, f"{a.path} ({a.format}{rank}, {a.layer_count} layers)")
    info.add_row(
        "layers",
        f"{s.matched} matched, {len(report.layers)} compared"
        + (f", {len(report.mismatched)} differ in shape" if report.mismatched else ""),
    )
    if s.only_in_a:
        info.add_row("only in A", f"{len(s.only_in_a)}: {_listed(s.only_in_a)}")
    if s.only_in_b:
        info.add_row("only in B", f"{len(s.only_in_b)}: {_listed(s.only_in_b)}")
    for m in report.mismatched:
        info.add_row(
            "shape differs",
            f"{m.name}: {m.shape_a[0]}×{m.shape_a[1]} vs {m.shape_b[0]}×{m.shape_b[1]}",
        )
    info.add_row(
        "difference",
        f"‖ΔW_A − ΔW_B‖F / ‖ΔW_A‖F = {_opt(s.relative_difference, '.4f')} over the compared "
        f"layers; cosine {_opt(s.cosine, '.4f')}",
    )
    info.add_row(
        "overlap",
        f"mean {_opt(s.mean_left_overlap, '.3f')} (output side), "
        f"{_opt(s.mean_right_overlap, '.3f')} (input side): mean cos² of the principal angles "
        "between the top-k singular subspaces (1 = same, 0 = orthogonal)",
    )
    if s.most_different:
        info.add_row("most different", ", ".join(s.most_different))
    return headers.expand(_to_text(Group(table, info), width=width, color=color), width=width)


def base_parts(
    report: InspectReport, *, headers: BlockHeaders | None = None
) -> list[RenderableType]:
    """The base-aware table and its summary (``inspect --base``); nothing without a base."""
    if report.summary.base is None:
        return []
    return [Text(""), base_table(report, headers=headers), base_summary_table(report)]


def base_table(report: InspectReport, *, headers: BlockHeaders | None = None) -> Table:
    """Per layer: stable ranks of ``W`` and ``W + ΔW``, relative size and alignment of ``ΔW``."""
    base = report.summary.base
    assert base is not None
    layers = [layer for layer in report.layers if layer.base is not None]
    prefix = common_prefix([layer.name for layer in layers])
    dora = any(layer.base.update == "dora" for layer in layers if layer.base is not None)
    title = f"against the base · {base.layers_matched} layers"
    if dora:
        title += " · ΔW = DoRA's effective update"
    if prefix:
        title += f" · {prefix}…"
    table = layer_table_frame(title)
    for header in BASE_HEADERS:
        table.add_column(header, justify="right", no_wrap=True)
    names = [layer.name for layer in layers]
    for layer, (block, label) in zip(layers, block_rows(names, prefix=prefix), strict=True):
        b = layer.base
        assert b is not None
        if block is not None:
            table.add_row(_block_cell(block, headers))
        cells: list[str | Text] = list(base_cells(b))
        change = BASE_HEADERS.index("Δsr")
        cells[change] = Text(
            str(cells[change]), style="bold" if abs(b.stable_rank_change) >= 1 else ""
        )
        table.add_row(label, *cells)
    return table


def base_summary_table(report: InspectReport) -> Table:
    """Adapter-wide base-aware numbers and which are exact or iterative."""
    base = report.summary.base
    assert base is not None
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column(overflow="fold")
    for label, text in base_summary_rows(base):
        info.add_row(label, text)
    return info
