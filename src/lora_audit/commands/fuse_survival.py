"""Run ``inspect --base BASE --fuse-into SCHEMES``: how much of each layer's update survives
fusing into a quantized weight.

For every adapted layer matched to its base weight, one layer at a time (memory stays that of
the largest layer): read ``W`` as stored, form ``ΔW = s·B·A`` in float64 in the stored layout,
quantize ``W`` and ``W + ΔW`` with each scheme (:mod:`lora_audit.linalg.quantize`, bit for
bit the real quantizers) and keep the sums of :mod:`lora_audit.linalg.fuse`. Schemes that
quantize each row on its own (Q8_0, Q4_0) go through the layer in chunks of rows; NF4, whose
double quantization centres every block's scale on the mean of the whole tensor's, takes
the layer at once. The advice line comes from :mod:`lora_audit.decisions.fuse_advice`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.decisions.fuse_advice import KEPT_ENOUGH, fuse_advice
from lora_audit.engine.batches import Progress
from lora_audit.errors import InputError
from lora_audit.formats.base_model import BaseMatch, BaseModel, BaseWeight
from lora_audit.linalg.fuse import FusePair, fuse_sums
from lora_audit.linalg.quantize import Scheme, row_local
from lora_audit.report import FuseLayerReport, FuseSchemeSummary, FuseSummary

#: Entries of ``ΔW`` formed at once for a row-local scheme (32 MiB in float64).
CHUNK_ENTRIES = 1 << 22


def fuse_survival(
    adapter: Adapter,
    base: BaseModel,
    match: BaseMatch,
    *,
    schemes: Sequence[Scheme],
    progress: Progress | None = None,
) -> tuple[dict[str, tuple[FuseLayerReport, ...]], FuseSummary]:
    """Every matched layer's fuse survival under each scheme, and the adapter's.

    Returns
    -------
    layers : dict
        Layer name → one :class:`FuseLayerReport` per scheme.
    summary : FuseSummary
        Totals per scheme and the advice line.

    Raises
    ------
    InputError
        When a base weight holds NaN or Inf.
    """
    per_layer: dict[str, dict[Scheme, FusePair]] = {}
    skipped: list[str] = []
    for layer in adapter.layers:
        ref = match.weights.get(layer.name)
        if ref is None:
            continue
        if layer.dora:
            skipped.append(layer.name)
        else:
            per_layer[layer.name] = layer_sums(adapter, base, ref, layer, schemes=schemes)
        if progress is not None:
            progress(1)
    layers = {
        name: tuple(_layer_report(scheme, sums[scheme]) for scheme in schemes)
        for name, sums in per_layer.items()
    }
    summaries = tuple(_scheme_summary(scheme, per_layer) for scheme in schemes)
    summary = FuseSummary(
        schemes=summaries,
        advice=fuse_advice(
            {scheme: s.kept for scheme, s in zip(schemes, summaries, strict=True)},
            {scheme: s.requantized_kept for scheme, s in zip(schemes, summaries, strict=True)},
        ),
        threshold=KEPT_ENOUGH,
        layers=len(per_layer),
        skipped_layers=tuple(skipped),
    )
    return layers, summary


def layer_sums(
    adapter: Adapter,
    base: BaseModel,
    ref: BaseWeight,
    layer: LoraLayer,
    *,
    schemes: Sequence[Scheme],
) -> dict[Scheme, FusePair]:
    """:class:`FuseSums` of one layer under each scheme, in the base tensor's stored layout."""
    b, a = adapter.load_factors(layer)
    w = base.load(ref, out_features=layer.out_features, in_features=layer.in_features)
    if not np.isfinite(w).all():
        raise InputError(
            f"{ref.file}: tensor {ref.key!r} contains NaN or Inf",
            hint="the base checkpoint is corrupt",
        )
    left, right = (b * layer.scale, a) if not ref.transpose else (a.T * layer.scale, b.T)
    if ref.transpose:
        w = w.T
    rows, cols = w.shape
    result: dict[Scheme, FusePair] = {}
    for scheme in schemes:
        step = max(1, CHUNK_ENTRIES // max(cols, 1)) if row_local(scheme) else rows
        total = FusePair()
        for start in range(0, rows, step):
            delta = left[start : start + step] @ right
            total = total + fuse_sums(w[start : start + step], delta, scheme)
        result[scheme] = total
    return result


def _layer_report(scheme: Scheme, pair: FusePair) -> FuseLayerReport:
    return FuseLayerReport(
        scheme=scheme,
        kept=pair.full.kept,
        relative_error=pair.full.relative_error,
        below_half_step=pair.full.below_half_step,
        requantized_kept=pair.requantized.kept,
        requantized_relative_error=pair.requantized.relative_error,
        fallback=pair.full.fallback,
    )


def _worst_kept(pair: FusePair) -> float | None:
    values = [k for k in (pair.full.kept, pair.requantized.kept) if k is not None]
    return min(values, default=None)


def _scheme_summary(
    scheme: Scheme, per_layer: dict[str, dict[Scheme, FusePair]]
) -> FuseSchemeSummary:
    total = FusePair()
    for sums in per_layer.values():
        total = total + sums[scheme]
    kept = [(k, name) for name, s in per_layer.items() if (k := _worst_kept(s[scheme])) is not None]
    worst = min(kept, default=None)
    return FuseSchemeSummary(
        scheme=scheme,
        kept=total.full.kept,
        relative_error=total.full.relative_error,
        below_half_step=total.full.below_half_step,
        requantized_kept=total.requantized.kept,
        requantized_relative_error=total.requantized.relative_error,
        worst_layer=None if worst is None else worst[1],
        worst_kept=None if worst is None else worst[0],
        fallback_layers=tuple(
            n for n, s in per_layer.items() if s[scheme].full.fallback is not None
        ),
    )
