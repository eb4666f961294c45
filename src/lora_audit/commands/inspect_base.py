"""Run the base-aware audit (``inspect --base``) and add its results to a finished report.

The pipeline: open the base checkpoint and match every adapted layer to its pretrained
weight (:mod:`lora_audit.formats.base_model`) → for each group of equal-shape layers, load ``W``
and the factors in float64 on the compute device (:func:`lora_audit.engine.batches.map_groups`, with
its NaN/Inf checks and out-of-memory fallback, and chunks sized for ``W``) → the metrics of
:mod:`lora_audit.linalg.against_base` → :class:`~lora_audit.report.BaseLayerReport` per layer and a
:class:`~lora_audit.report.BaseSummary`, attached to the :class:`InspectReport` built by
:func:`lora_audit.commands.inspect.inspect_adapter`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.commands.base_weights import (
    check_base_options,
    chunk_bytes_with_weights,
    load_magnitudes,
    load_weights,
)
from lora_audit.commands.intruders import (
    IntruderOptions,
    check_intruder_request,
    compute_intruders,
    intruder_layer_report,
    intruder_summary,
)
from lora_audit.engine.batches import (
    Progress,
    Warn,
    group_layers,
    map_groups,
)
from lora_audit.engine.device import EngineOptions, require_torch, resolve_device
from lora_audit.formats.base_model import (
    BaseMatch,
    BaseModel,
    BaseWeight,
    magnitude_key,
    match_base_weights,
    open_base,
    unmatched_error,
    unmatched_warning,
)
from lora_audit.linalg.against_base import (
    EXACT_FIELDS,
    ITERATIVE_FIELDS,
    UPDATE_FIELDS,
    BaseMetrics,
    base_metrics,
)
from lora_audit.linalg.intruders import Intruders
from lora_audit.linalg.krylov import KrylovOptions
from lora_audit.linalg.quantize import Scheme
from lora_audit.report import BaseLayerReport, BaseStat, BaseSummary, InspectReport, LayerReport

if TYPE_CHECKING:
    import torch

    from lora_audit.commands.inspect import AuditOptions


#: Per-layer metrics summarised adapter-wide (mean, median, min, max and their layers).
SUMMARISED = (
    "weight_stable_rank",
    "merged_stable_rank",
    "stable_rank_change",
    "relative_frobenius",
    "relative_spectral",
    "top_k_alignment",
    "subspace_overlap",
    "amplification",
    "update_energy_at_rank",
    "random_alignment",
    "random_overlap",
)


@dataclass(frozen=True, kw_only=True)
class BaseOptions:
    """What ``inspect --base`` compares.

    Attributes
    ----------
    path
        The base checkpoint: a ``.safetensors`` file, a directory, or a sharded model.
    k
        Dimension of the subspaces compared for every layer; ``None`` uses each layer's
        energy rank at the audit's τ.
    partial
        Audit the layers that match and warn about the rest, instead of failing.
    krylov
        Tolerance and limits of the iterative triplets.
    fuse_into
        Quantization schemes to check fusing into (``--fuse-into``); empty for none.
    intruders
        Also find intruder dimensions (``--intruders``); ``None``: not computed.
    """

    path: Path
    k: int | None = None
    partial: bool = False
    krylov: KrylovOptions = field(default_factory=KrylovOptions)
    fuse_into: tuple[Scheme, ...] = ()
    intruders: IntruderOptions | None = None


def inspect_with_base(
    adapter: Adapter,
    *,
    options: AuditOptions,
    base: BaseOptions | None,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> InspectReport:
    """``inspect`` of one adapter, with the base-aware audit when ``base`` is given.

    The one pipeline behind ``lora-audit inspect [--base DIR]`` and :func:`lora_audit.inspect`.
    ``progress`` counts layers: each once for the spectra, once more for the base, and once
    more for ``--intruders``.
    """
    from lora_audit.commands.inspect import inspect_adapter

    if base is not None:
        check_base_options(base.path, k=base.k, partial=base.partial)  # before any work
        if base.intruders is not None:
            check_intruder_request(base.intruders)
    report = inspect_adapter(adapter, options=options, progress=progress, warn=warn)
    if base is None:
        return report
    return audit_base(
        report, adapter, options=base, engine=options.engine, progress=progress, warn=warn
    )


def audit_base(
    report: InspectReport,
    adapter: Adapter,
    *,
    options: BaseOptions,
    engine: EngineOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> InspectReport:
    """``report`` with the base-aware metrics of every matched layer and their summary.

    Raises
    ------
    InputError
        When the base cannot be read, a layer has no matching weight (without
        ``partial``), or a base weight holds NaN or Inf.
    UsageError
        For ``k < 1``.
    """
    check_base_options(options.path, k=options.k, partial=options.partial)
    if options.intruders is not None:
        check_intruder_request(options.intruders)
    base = open_base(options.path)
    match = match_base_weights(adapter, base)
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    if match.unmatched and (not options.partial or not match.weights):
        raise unmatched_error(base, match, layer_count=len(adapter.layers))
    if match.unmatched:
        note(unmatched_warning(match))
    kohya_dora = [
        layer.name
        for layer in adapter.layers
        if layer.dora and layer.name in match.weights and magnitude_key(layer) is None
    ]
    if kohya_dora:
        note(
            f"--base: {len(kohya_dora)} DoRA layer(s) store dora_scale (kohya/LyCORIS), whose "
            "normalisation is not PEFT's; their base metrics are those of s·B·A"
        )
    by_name = {layer.name: layer for layer in report.layers}
    ks = {
        name: options.k if options.k is not None else max(by_name[name].energy_rank, 0)
        for name in match.weights
    }
    metrics = compute(
        adapter,
        base,
        match,
        ks=ks,
        krylov=options.krylov,
        engine=engine,
        progress=progress,
        warn=note,
    )
    not_converged = [name for name, m in metrics.items() if not m.converged]
    if not_converged:
        note(
            f"--base: the iterative triplets of {len(not_converged)} layer(s) did not reach the "
            f"tolerance {options.krylov.tolerance:g} in {options.krylov.max_steps} steps "
            f"(e.g. {not_converged[0]}); their σ₁ and alignment numbers are less accurate "
            "(see residual and subspace_error)"
        )
    found: dict[str, Intruders] = {}
    if options.intruders is not None:
        found = compute_intruders(
            adapter, base, match, options=options.intruders, device=engine.device, warn=note,
            progress=progress,
        )  # fmt: skip
    layers = tuple(
        replace(
            layer,
            base=_layer_report(match.weights[layer.name], metrics[layer.name], found),
        )
        if layer.name in metrics
        else layer
        for layer in report.layers
    )
    base_summary = _summary(base, match, layers, options=options)
    if options.intruders is not None:
        base_summary = replace(
            base_summary, intruders=intruder_summary(found, options=options.intruders)
        )
    summary = replace(report.summary, base=base_summary)
    if options.fuse_into:
        from lora_audit.commands.fuse_survival import fuse_survival

        fused, fuse = fuse_survival(
            adapter, base, match, schemes=options.fuse_into, progress=progress
        )
        if fuse.skipped_layers:
            note(
                f"--fuse-into: {len(fuse.skipped_layers)} DoRA layer(s) not checked (e.g. "
                f"{fuse.skipped_layers[0]}): their fused weight is not W + s·B·A"
            )
        layers = tuple(replace(x, fuse=fused.get(x.name, ())) for x in layers)
        summary = replace(summary, fuse=fuse)
    return replace(report, layers=layers, summary=summary, warnings=(*report.warnings, *warnings))


def compute(
    adapter: Adapter,
    base: BaseModel,
    match: BaseMatch,
    *,
    ks: Mapping[str, int],
    krylov: KrylovOptions,
    engine: EngineOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> dict[str, BaseMetrics]:
    """:class:`BaseMetrics` of every matched layer, by name, batched by shape and kind."""
    layers = [layer for layer in adapter.layers if layer.name in match.weights]
    dora = [layer for layer in layers if magnitude_key(layer) is not None and layer.dora]
    plain = [layer for layer in layers if layer not in dora]
    require_torch("--base")
    device = resolve_device(engine.device)
    results: dict[str, BaseMetrics] = {}
    for subset, is_dora in ((plain, False), (dora, True)):
        for group in group_layers(subset):

            def batch(
                chunk: Sequence[LoraLayer],
                b: torch.Tensor,
                a: torch.Tensor,
                *,
                is_dora: bool = is_dora,
            ) -> list[BaseMetrics]:
                w = load_weights(adapter, base, match, chunk, like=b)
                magnitude = load_magnitudes(adapter, chunk, like=b) if is_dora else None
                return base_metrics(
                    w,
                    b,
                    a,
                    scales=[layer.scale for layer in chunk],
                    ks=[ks[layer.name] for layer in chunk],
                    magnitude=magnitude,
                    options=krylov,
                )

            part = replace(adapter, layers=tuple(group))
            budget = chunk_bytes_with_weights(group[0], device=device, krylov=krylov, ks=ks)
            options = replace(engine, chunk_bytes=budget)
            results.update(map_groups(part, batch, options=options, progress=progress, warn=warn))
    return results


def _layer_report(
    weight: BaseWeight, m: BaseMetrics, intruders: Mapping[str, Intruders]
) -> BaseLayerReport:
    """The report's form of one layer's metrics: the same numbers, plus where W came from."""
    numbers = {f.name: getattr(m, f.name) for f in fields(m) if f.name != "dora"}
    found = intruders.get(weight.layer)
    return BaseLayerReport(
        key=weight.key,
        file=weight.file.name,
        transposed=weight.transpose,
        update="dora" if m.dora else "lora",
        intruders=None if found is None else intruder_layer_report(found),
        **numbers,
    )


def _summary(
    base: BaseModel, match: BaseMatch, layers: Sequence[LayerReport], *, options: BaseOptions
) -> BaseSummary:
    audited = [(layer.name, layer.base) for layer in layers if layer.base is not None]
    stats: dict[str, BaseStat] = {}
    for name in SUMMARISED:
        values = [
            (float(getattr(b, name)), layer) for layer, b in audited if _finite(getattr(b, name))
        ]
        if not values:
            continue
        numbers = [v for v, _ in values]
        low_value, low_layer = min(values)
        top_value, top_layer = max(values)
        stats[name] = BaseStat(
            mean=statistics.fmean(numbers),
            median=statistics.median(numbers),
            min=low_value,
            max=top_value,
            min_layer=low_layer,
            max_layer=top_layer,
        )
    w2 = sum(b.weight_frobenius_norm**2 for _, b in audited)
    d2 = sum(b.update_frobenius_norm**2 for _, b in audited)
    dora = any(b.update == "dora" for _, b in audited)
    iterative = ITERATIVE_FIELDS + (UPDATE_FIELDS if dora else ())
    exact = EXACT_FIELDS + (() if dora else UPDATE_FIELDS[:2])
    files = tuple(dict.fromkeys(str(w.file) for w in match.weights.values()))
    return BaseSummary(
        path=str(base.path),
        index=None if base.index is None else str(base.index),
        files=files,
        layers_matched=len(audited),
        unmatched_layers=tuple(name for name, _ in match.unmatched),
        k=options.k,
        tolerance=options.krylov.tolerance,
        exact=exact,
        iterative=iterative,
        stats=stats,
        total_relative_frobenius=math.sqrt(d2 / w2) if w2 > 0 else 0.0,
        max_residual=max((b.residual for _, b in audited), default=0.0),
        max_subspace_error=max((b.subspace_error for _, b in audited), default=0.0),
        converged=all(b.converged for _, b in audited),
    )


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
