"""Run ``merge``: the weighted sum of adapters, at the rank it needs, with the optimal error.

Per layer, ``Σᵢ wᵢ·ΔWᵢ = [w₁s₁B₁ | w₂s₂B₂ | …]·[A₁; A₂; …]`` is one thin product of rank
``Σ rᵢ`` (:mod:`lora_audit.linalg.stacking`), served as a virtual adapter
(:func:`lora_audit.commands.merge_inputs.merged_adapter`). The pipeline is then compress's:
spectra and Grams from one engine pass → ranks from the same rules
(:mod:`lora_audit.decisions.compress_ranks`) → balanced rank-k factors of the truncated SVD
(:mod:`lora_audit.engine.refactorisation`), cast to the output dtype → the same writer and
output guards → a finished :class:`MergeReport`. No dense ``ΔW`` is formed. ``concat`` skips
the truncation and writes the stacked factors themselves (lossless).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lora_audit import __version__
from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.commands.adapter_info import TOOL
from lora_audit.commands.compress import format_value, start_digest
from lora_audit.commands.merge_inputs import (
    MergedSource,
    Part,
    check_inputs,
    check_weights,
    drop_warning,
    layer_parts,
    merged_adapter,
    output_template,
)
from lora_audit.commands.merge_sense import cancelled_layers, refuse_cancelled
from lora_audit.commands.serving import check_uniform, serving, settle_kept, with_padding
from lora_audit.decisions.compress_ranks import RankRule, check_budget, select_ranks
from lora_audit.engine.batches import Progress, Warn
from lora_audit.engine.device import EngineOptions, device_type
from lora_audit.engine.refactorisation import truncate_layers
from lora_audit.engine.spectra import analyse
from lora_audit.errors import UsageError
from lora_audit.formats.writer import (
    NewLayer,
    check_output,
    new_layer,
    output_is_directory,
    stored_dtypes,
    widest_dtype,
    write_compressed,
)
from lora_audit.linalg.metrics import cumulative_energy
from lora_audit.linalg.truncation import relative_error
from lora_audit.report.merge import LayerMerge, MergeInput, MergeReport, MergeSettings, MergeSummary

if TYPE_CHECKING:
    from lora_audit.linalg.spectral import Float64Array


@dataclass(frozen=True, kw_only=True)
class MergeOptions:
    """What ``merge`` does.

    Attributes
    ----------
    rule
        How ranks are chosen; ``None`` for ``concat`` (stack the factors, no truncation).
    weights
        One per input (``None``: all 1); any finite value, negative ones subtract.
    output
        Where to write; ``None`` with ``dry_run``.
    drop_extras
        Leave out tensors that are not LoRA factors (``modules_to_save`` heads), which the
        inputs must otherwise hold identically.
    uniform_rank
        Zero-pad every layer of a PEFT output to one rank, so that llama.cpp's per-tensor
        ``alpha / rank`` rule agrees with PEFT and vLLM (:mod:`lora_audit.commands.serving`).
    """

    rule: RankRule | None
    output: Path | None
    weights: Sequence[float] | None = None
    dry_run: bool = False
    force: bool = False
    drop_extras: bool = False
    engine: EngineOptions = field(default_factory=EngineOptions)
    uniform_rank: bool = False


@dataclass(frozen=True, kw_only=True)
class _Plan:
    layer: LoraLayer  # the merged (virtual) layer: rank Σrᵢ
    parts: tuple[Part, ...]
    new_rank: int
    energy_kept: float
    frobenius_norm: float


def merge_adapters(
    adapters: Sequence[Adapter],
    *,
    options: MergeOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> MergeReport:
    """Merge ``adapters`` as ``options`` say, write the result, and return the report.

    Raises
    ------
    UsageError
        For bad weights, fewer than two inputs, a missing or unsafe output, or a budget below
        the ``min_rank`` floor.
    InputError
        For inputs that cannot be summed exactly (:func:`check_inputs`).
    """
    weights = check_weights(options.weights, count=len(adapters))
    check_inputs(adapters, drop_extras=options.drop_extras)
    parts = layer_parts(adapters, weights)
    merged = merged_adapter(adapters, parts)
    template = output_template(adapters, parts, drop_extras=options.drop_extras)
    check_uniform(template, uniform_rank=options.uniform_rank)
    writing = not options.dry_run
    if writing:
        if options.output is None:
            raise UsageError("--output is required unless --dry-run is given")
        check_output(template, options.output, force=options.force, inputs=adapters)
    digests = [start_digest(a) for a in adapters] if writing else []
    keep_grams = writing and options.rule is not None
    analysis = analyse(
        merged, options=options.engine, progress=progress, warn=warn, keep_grams=keep_grams
    )
    assert isinstance(merged.source, MergedSource)
    cancel_note = refuse_cancelled(
        cancelled_layers(merged.source, analysis.sigmas),
        layer_count=len(merged.layers),
        weights=weights,
    )
    if warn is not None and cancel_note is not None:
        warn(cancel_note)
    plans = _plan(merged, parts, analysis.sigmas, rule=options.rule)
    file_after: int | None = None
    if writing and options.output is not None:
        store = _storer(template, parts)
        if options.rule is None:
            assert isinstance(merged.source, MergedSource)
            source = merged.source
            new_layers = {
                p.layer.name: store(p.layer, *source.stacked(p.layer.name)) for p in plans
            }
        else:
            ranks = {p.layer.name: p.new_rank for p in plans}
            new_layers = truncate_layers(
                merged, ranks=ranks, grams=analysis.grams, finish=store, options=options.engine
            )
        # every layer is new, its scale baked in: the one scale is 1
        new_layers = settle_kept(template, new_layers, scale=1.0, uniform_rank=options.uniform_rank)
        provenance = _provenance(
            adapters, weights, options.rule, digests=[d.result() for d in digests]
        )
        written = write_compressed(
            template,
            new_layers=new_layers,
            output=options.output,
            provenance=provenance,
            force=options.force,
            inputs=adapters,
        )
        file_after = written.stat().st_size
    report = _report(adapters, weights, template, plans, options=options, file_after=file_after)
    ranks = {p.layer.name: p.new_rank for p in plans}
    report = replace(
        with_padding(report, uniform_rank=options.uniform_rank),
        serving=serving(
            template,
            ranks,
            rewritten=ranks,  # every layer, its scale baked in: the one scale is 1
            scale=1.0,
            uniform_rank=options.uniform_rank,
            extras_fix="--drop-extras" if template.passthrough_keys else None,
        ),
    )
    if warn is not None and (message := drop_warning(adapters, drop_extras=options.drop_extras)):
        warn(message)
    return report


def _plan(
    merged: Adapter,
    parts: Mapping[str, tuple[Part, ...]],
    sigmas: Mapping[str, Float64Array],
    *,
    rule: RankRule | None,
) -> list[_Plan]:
    layers = merged.layers
    spectra = [sigmas[layer.name] for layer in layers]
    if rule is None:
        ranks = [layer.rank for layer in layers]
    else:
        costs = [layer.params_per_rank for layer in layers]
        ranks = select_ranks(spectra, costs=costs, rule=rule)
        check_budget(rule, ranks=ranks, costs=costs)
        ranks = [
            max(1, min(k, x.out_features, x.in_features))
            for k, x in zip(ranks, layers, strict=True)
        ]
    plans = []
    for layer, sigma, k in zip(layers, spectra, ranks, strict=True):
        energy = cumulative_energy(sigma)
        full = k >= sigma.shape[0] or not float(sigma[0]) > 0
        plans.append(
            _Plan(
                layer=layer,
                parts=parts[layer.name],
                new_rank=k,
                energy_kept=1.0 if full else float(energy[k - 1]),
                frobenius_norm=math.sqrt(float((sigma**2).sum())),
            )
        )
    return plans


def _storer(
    template: Adapter, parts: Mapping[str, tuple[Part, ...]]
) -> Callable[[LoraLayer, Float64Array, Float64Array], NewLayer]:
    """Rounds a merged layer's factors to the widest dtype its inputs store it in."""
    by_name = {layer.name: layer for layer in template.layers}
    dtypes = {
        name: widest_dtype(d for p in shares for d in stored_dtypes(p.adapter, p.layer))
        for name, shares in parts.items()
    }

    def store(layer: LoraLayer, b: Float64Array, a: Float64Array) -> NewLayer:
        dtype = dtypes[layer.name]
        return new_layer(by_name[layer.name], b=b, a=a, dtypes=(dtype, dtype))

    return store


def _provenance(
    adapters: Sequence[Adapter],
    weights: Sequence[float],
    rule: RankRule | None,
    *,
    digests: Sequence[str],
) -> dict[str, str]:
    """What was merged, with which weights and rule, for the output's safetensors metadata."""
    merged = [
        {"file": a.tensor_file.name, "format": a.format, "sha256": d, "weight": w}
        for a, w, d in zip(adapters, weights, digests, strict=True)
    ]
    return {
        "lora_audit.version": __version__,
        "lora_audit.merge": json.dumps(merged),
        "lora_audit.method": "concat" if rule is None else rule.mode,
        "lora_audit.parameter": "" if rule is None else format_value(rule.value),
        "lora_audit.min_rank": "" if rule is None else str(rule.min_rank),
        "lora_audit.max_rank": "" if rule is None or rule.max_rank is None else str(rule.max_rank),
    }


def _report(
    adapters: Sequence[Adapter],
    weights: Sequence[float],
    template: Adapter,
    plans: Sequence[_Plan],
    *,
    options: MergeOptions,
    file_after: int | None,
) -> MergeReport:
    from collections import Counter

    layers = tuple(
        LayerMerge(
            name=p.layer.name,
            kind=p.layer.kind.value,
            shape=(p.layer.out_features, p.layer.in_features),
            inputs=tuple(part.index for part in p.parts),
            rank=p.layer.rank,
            new_rank=p.new_rank,
            energy_kept=p.energy_kept,
            relative_error=relative_error(p.energy_kept),
            frobenius_norm=p.frobenius_norm,
            params=sum(part.layer.params for part in p.parts),
            params_after=p.new_rank * p.layer.params_per_rank,
        )
        for p in plans
    )
    total = sum(x.frobenius_norm**2 for x in layers)
    lost = sum((x.relative_error * x.frobenius_norm) ** 2 for x in layers)
    inputs = tuple(
        MergeInput(
            path=str(a.path),
            tensor_file=str(a.tensor_file),
            format=str(a.format),
            weight=w,
            layer_count=len(a.layers),
            file_bytes=_size(a.tensor_file),
            scale_sources=dict(sorted(Counter(x.scale_source for x in a.layers).items())),
        )
        for a, w in zip(adapters, weights, strict=True)
    )
    rule = options.rule
    kind = "directory" if output_is_directory(template) else "file"
    dropped = (
        sorted({k for a in adapters for k in a.passthrough_keys}) if options.drop_extras else []
    )
    warnings = [m for a in adapters for m in a.warnings]
    if (message := drop_warning(adapters, drop_extras=options.drop_extras)) is not None:
        warnings.append(message)
    return MergeReport(
        tool=TOOL,
        inputs=inputs,
        settings=MergeSettings(
            mode="concat" if rule is None else rule.mode,
            value=None if rule is None else rule.value,
            min_rank=1 if rule is None else rule.min_rank,
            max_rank=None if rule is None else rule.max_rank,
            device=device_type(options.engine.device),
            method=options.engine.method,
        ),
        output=None if options.output is None else str(options.output),
        output_format=f"{template.format} {kind}",
        dry_run=options.dry_run,
        layers=layers,
        summary=MergeSummary(
            layer_count=len(layers),
            partial_layers=sum(len(x.inputs) < len(adapters) for x in layers),
            params=sum(x.params for x in layers),
            params_after=sum(x.params_after for x in layers),
            min_energy_kept=min((x.energy_kept for x in layers), default=1.0),
            max_relative_error=max((x.relative_error for x in layers), default=0.0),
            relative_error=math.sqrt(lost / total) if total > 0 else 0.0,
            file_bytes=sum(x.file_bytes for x in inputs),
            file_bytes_after=file_after,
            assumed_scale_layers=sum(x.scale_sources.get("assumed", 0) for x in inputs),
            saved_fraction=_saved(layers),
        ),
        dropped_extras=tuple(dropped),
        warnings=tuple(dict.fromkeys(warnings)),
    )


def _saved(layers: Sequence[LayerMerge]) -> float:
    before = sum(x.params for x in layers)
    return 1 - sum(x.params_after for x in layers) / before if before else 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
