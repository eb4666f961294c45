"""Run ``compress``: choose ranks, refactorise the layers that shrink, write, report.

The pipeline: spectra (and their Gram matrices) from one pass of the engine → ranks from
:mod:`lora_audit.decisions.compress_ranks` → for each layer that gets smaller, the balanced
rank-k factors of its truncated SVD, streamed from the same Grams
(:mod:`lora_audit.engine.refactorisation`) and cast to the stored dtype at once →
:mod:`lora_audit.formats.writer` → a finished :class:`CompressReport`.
The input's SHA-256 (for the output's provenance) is computed in a thread meanwhile.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lora_audit import __version__
from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.commands.adapter_info import TOOL, adapter_info
from lora_audit.commands.compress_fit import fit_options
from lora_audit.commands.serving import (
    check_uniform,
    global_scale,
    scaled_store,
    serving,
    settle_kept,
    with_padding,
)
from lora_audit.decisions.compress_ranks import (
    RankRule,
    check_budget,
    refuse_untrained,
    select_ranks,
    truncation,
)
from lora_audit.decisions.serving_fit import check_fitted
from lora_audit.engine.batches import Progress, Warn
from lora_audit.engine.device import EngineOptions, device_type
from lora_audit.engine.refactorisation import truncate_layers
from lora_audit.engine.spectra import analyse
from lora_audit.errors import UsageError
from lora_audit.formats.writer import check_output, output_is_directory, write_compressed
from lora_audit.linalg.metrics import cumulative_energy
from lora_audit.linalg.truncation import relative_error
from lora_audit.report import (
    CompressReport,
    CompressSettings,
    CompressSummary,
    LayerCompression,
)

if TYPE_CHECKING:
    from concurrent.futures import Future

    import numpy as np
    import numpy.typing as npt

    from lora_audit.decisions.serving_targets import Target


@dataclass(frozen=True, kw_only=True)
class CompressOptions:
    """What ``compress`` does.

    Attributes
    ----------
    rule
        How ranks are chosen.
    output
        Where to write; ``None`` with ``dry_run``.
    dry_run
        Plan and report, write nothing.
    force
        Replace an existing output.
    allow_dora
        Compress a DoRA adapter although its magnitude vectors were trained against the
        full-rank update (they are kept as they are).
    base
        The base model's weights: DoRA layers are then truncated exactly, keeping each output
        row's DoRA scale (:class:`lora_audit.commands.compress_dora.DoraCompression`).
    uniform_rank
        Zero-pad every layer of a PEFT output to one rank, so that llama.cpp's per-tensor
        ``alpha / rank`` rule gives every layer the same scale as PEFT and vLLM
        (:mod:`lora_audit.commands.serving`).
    fit
        ``--fit TARGET``: clamp ``rule`` to the server's rank bound, pad where it needs one
        rank, refuse what it refuses (:mod:`lora_audit.commands.compress_fit`).
    """

    rule: RankRule
    output: Path | None
    dry_run: bool = False
    force: bool = False
    allow_dora: bool = False
    engine: EngineOptions = field(default_factory=EngineOptions)
    base: Path | None = None
    uniform_rank: bool = False
    fit: Target | None = None


@dataclass(frozen=True, kw_only=True)
class _Plan:
    layer: LoraLayer
    new_rank: int
    truncate: bool
    energy_kept: float
    frobenius_norm: float


def compress_adapter(
    adapter: Adapter,
    *,
    options: CompressOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> CompressReport:
    """Compress ``adapter`` as ``options`` say and return the report.

    Raises
    ------
    UsageError
        For a DoRA adapter without ``allow_dora``, an output that exists or is the input, or
        a budget below what every layer needs at ``min_rank``.
    InputError
        For PEFT LoHa / LoKr / AdaLoRA / MoE-expert adapters, which PEFT could not load back,
        and for an untrained adapter (ΔW = 0 in every layer: nothing to keep).
    """
    from lora_audit.formats.peft_variants import compress_refusal

    refusal = compress_refusal(adapter)
    if refusal is not None:
        raise refusal
    options = fit_options(adapter, options)
    warnings = list(adapter.warnings)
    if any(layer.dora for layer in adapter.layers) and options.base is None:
        if not options.allow_dora:
            raise UsageError(
                f"{adapter.path}: DoRA adapter: its magnitude vectors depend on the base weights "
                "and were trained against the full-rank update, so a truncated adapter would "
                "not be the best rank-k version of what it does",
                hint="pass --allow-dora to compress B·A anyway and keep the magnitudes as they are",
            )
        message = (
            "DoRA: lora_magnitude_vector kept unchanged; the result only approximates the "
            "original (the magnitudes need the base weights)"
        )
        warnings.append(message)
        if warn is not None:
            warn(message)
    check_uniform(adapter, uniform_rank=options.uniform_rank)
    if not options.dry_run:
        if options.output is None:
            raise UsageError("--output is required unless --dry-run is given")
        check_output(adapter, options.output, force=options.force, base=options.base)
    writing = not options.dry_run and options.output is not None
    digest = start_digest(adapter) if writing else None
    analysis = analyse(
        adapter, options=options.engine, progress=progress, warn=warn, keep_grams=writing
    )
    sigmas = analysis.sigmas
    dora = None
    if options.base is not None:  # DoRA layers: spectra of the update as DoRA applies it
        from lora_audit.commands.compress_dora import DoraCompression

        dora = DoraCompression.prepare(adapter, options.base, engine=options.engine, warn=warn)
        sigmas = {**sigmas, **(dora.sigmas if dora is not None else {})}
    refuse_untrained(str(adapter.path), list(sigmas.values()))
    plans = _plan(adapter, sigmas, rule=options.rule)
    ranks = {p.layer.name: p.new_rank for p in plans if p.truncate}
    if options.fit is not None:
        check_fitted(options.fit, [p.new_rank for p in plans])
    # DoRA's exact refactorisation bakes in scale 1: the one scale is then 1
    scale = 1.0 if dora is not None else global_scale(adapter, ranks)
    file_after: int | None = None
    if digest is not None and options.output is not None:
        exact_dora = set(dora.sigmas) if dora is not None else set()
        new_layers = truncate_layers(
            adapter,
            ranks={name: k for name, k in ranks.items() if name not in exact_dora},
            grams=analysis.grams,
            finish=scaled_store(adapter, scale),
            options=options.engine,
            warn=warn,
        )
        if dora is not None:
            new_layers.update(dora.refactor({n: ranks[n] for n in dora.sigmas if n in ranks}))
        new_layers = settle_kept(
            adapter, new_layers, scale=scale, uniform_rank=options.uniform_rank
        )
        written = write_compressed(
            adapter,
            new_layers=new_layers,
            output=options.output,
            provenance=_provenance(adapter, options, sha256=digest.result()),
            force=options.force,
            base=options.base,
            card_note=card_note(plans, rule=options.rule, fit=options.fit),
            scale=scale,
        )
        file_after = written.stat().st_size
    report = _report(adapter, plans, options=options, file_after=file_after, warnings=warnings)
    report = with_padding(report, uniform_rank=options.uniform_rank)
    after = {p.layer.name: p.new_rank if p.truncate else p.layer.rank for p in plans}
    return replace(
        report,
        serving=serving(
            adapter, after, rewritten=ranks, scale=scale, uniform_rank=options.uniform_rank
        ),
    )


def _plan(
    adapter: Adapter, sigmas: dict[str, npt.NDArray[np.float64]], *, rule: RankRule
) -> list[_Plan]:
    layers = adapter.layers
    spectra_ = [sigmas[layer.name] for layer in layers]
    costs = [layer.params_per_rank for layer in layers]
    ranks = select_ranks(spectra_, costs=costs, rule=rule)
    check_budget(rule, ranks=ranks, costs=costs)
    plans = []
    for layer, sigma, k in zip(layers, spectra_, ranks, strict=True):
        cut = truncation(
            rank=layer.rank,
            params=layer.params,
            out_features=layer.out_features,
            in_features=layer.in_features,
            k=k,
        )
        energy = cumulative_energy(sigma)
        kept = float(energy[cut.new_rank - 1]) if cut.truncated and float(sigma[0]) > 0 else 1.0
        plans.append(
            _Plan(
                layer=layer,
                new_rank=cut.new_rank,
                truncate=cut.truncated,
                energy_kept=kept,
                frobenius_norm=math.sqrt(float((sigma.astype("float64") ** 2).sum())),
            )
        )
    return plans


def start_digest(adapter: Adapter) -> Future[str]:
    """The SHA-256 of the tensor file, hashed in a thread (hashlib releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def digest() -> str:
        h = hashlib.sha256()
        with adapter.tensor_file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()

    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(digest)
    pool.shutdown(wait=False)
    return future


def _provenance(adapter: Adapter, options: CompressOptions, *, sha256: str) -> dict[str, str]:
    rule = options.rule
    fit = {} if options.fit is None else {"lora_audit.fit": str(options.fit)}
    return fit | {
        "lora_audit.version": __version__,
        "lora_audit.method": rule.mode,
        "lora_audit.parameter": format_value(rule.value),
        "lora_audit.min_rank": str(rule.min_rank),
        "lora_audit.max_rank": "" if rule.max_rank is None else str(rule.max_rank),
        "lora_audit.source_sha256": sha256,
        "lora_audit.source_file": adapter.tensor_file.name,
    }


_RULE_FLAGS = {"rank": "--rank", "energy": "--energy", "ratio": "--ratio", "budget": "--budget"}


def card_note(plans: Sequence[_Plan], *, rule: RankRule, fit: Target | None = None) -> str:
    """The line appended to a carried-over model card: tool, date, rule, ranks, energy."""
    import datetime

    truncated = [p for p in plans if p.truncate]
    before = sorted({p.layer.rank for p in plans})
    after = sorted({p.new_rank if p.truncate else p.layer.rank for p in plans})
    params = sum(p.layer.params for p in plans)
    params_after = sum(
        p.new_rank * p.layer.params_per_rank if p.truncate else p.layer.params for p in plans
    )
    kept = min((p.energy_kept for p in plans), default=1.0)
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    return (
        f"*Compressed by lora-audit {__version__} on {today} with `lora-audit compress "
        f"{_RULE_FLAGS[rule.mode]} {format_value(rule.value)}{_fit_flag(fit)}`: "
        f"{len(truncated)} of "
        f"{len(plans)} layers truncated, rank {_span(before)} → {_span(after)}, "
        f"{params:,} → {params_after:,} LoRA parameters; every layer keeps at least "
        f"{kept:.2%} of its energy ‖ΔW‖F². The card above describes the adapter before "
        "compression.*"
    )


def _fit_flag(fit: Target | None) -> str:
    return "" if fit is None else f" --fit {fit}"


def _span(ranks: Sequence[int]) -> str:
    return "–" if not ranks else str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"


def format_value(value: float) -> str:
    """A rule's value as written in provenance: ``2000000`` (not ``2e+06``), ``0.99``."""
    return str(int(value)) if float(value).is_integer() else f"{value:.12g}"


def _report(
    adapter: Adapter,
    plans: Sequence[_Plan],
    *,
    options: CompressOptions,
    file_after: int | None,
    warnings: list[str],
) -> CompressReport:
    layers = tuple(
        LayerCompression(
            name=p.layer.name,
            kind=p.layer.kind.value,
            structure=p.layer.structure.value,
            shape=(p.layer.out_features, p.layer.in_features),
            rank=p.layer.rank,
            new_rank=p.new_rank,
            action="truncated" if p.truncate else "kept",
            energy_kept=p.energy_kept,
            relative_error=relative_error(p.energy_kept),
            frobenius_norm=p.frobenius_norm,
            params=p.layer.params,
            params_after=p.new_rank * p.layer.params_per_rank if p.truncate else p.layer.params,
        )
        for p in plans
    )
    total = sum(layer.frobenius_norm**2 for layer in layers)
    lost = sum((layer.relative_error * layer.frobenius_norm) ** 2 for layer in layers)
    params = sum(layer.params for layer in layers)
    params_after = sum(layer.params_after for layer in layers)
    info = adapter_info(adapter)
    output = options.output
    fmt = f"{adapter.format} {'directory' if output_is_directory(adapter) else 'file'}"
    return CompressReport(
        tool=TOOL,
        adapter=info,
        settings=CompressSettings(
            mode=options.rule.mode,
            value=options.rule.value,
            min_rank=options.rule.min_rank,
            max_rank=options.rule.max_rank,
            device=device_type(options.engine.device),
            method=options.engine.method,
            fit=None if options.fit is None else str(options.fit),
        ),
        output=None if output is None else str(output),
        output_format=fmt,
        dry_run=options.dry_run,
        layers=layers,
        summary=CompressSummary(
            layer_count=len(layers),
            truncated=sum(layer.action == "truncated" for layer in layers),
            params=params,
            params_after=params_after,
            min_energy_kept=min((layer.energy_kept for layer in layers), default=1.0),
            max_relative_error=max((layer.relative_error for layer in layers), default=0.0),
            relative_error=math.sqrt(lost / total) if total > 0 else 0.0,
            energy_kept=1 - lost / total if total > 0 else 1.0,
            file_bytes=info.file_bytes,
            file_bytes_after=file_after,
            saved_fraction=1 - params_after / params if params else 0.0,
            assumed_scale_layers=info.scale_sources.get("assumed", 0),
        ),
        warnings=tuple(warnings),
    )
