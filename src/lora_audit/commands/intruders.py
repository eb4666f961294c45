"""Intruder dimensions of every matched layer (``inspect --base --intruders``).

For each layer the base audit matched (restricted by ``--intruder-layers``): ``W`` from the
base in ``ΔW``'s orientation, float64; the dense ``ΔW`` (``s·B·A``, or DoRA's effective update
``W′ − W`` when the adapter stores PEFT's magnitude); ``W``'s full thin left basis from the
cache (:mod:`lora_audit.formats.basis_cache`) or one SVD, stored for the next audit; then
:func:`lora_audit.linalg.intruders.intruder_dimensions`. One layer at a time, so memory is a
few dense matrices of the largest layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.choices import DeviceName
from lora_audit.engine.batches import Progress, Warn
from lora_audit.engine.device import resolve_device
from lora_audit.errors import UsageError
from lora_audit.formats.base_model import BaseMatch, BaseModel, magnitude_key
from lora_audit.formats.basis_cache import BasisCache, basis_key, max_bytes
from lora_audit.linalg.intruders import (
    DEFAULT_EPSILON,
    DEFAULT_TOP,
    Intruders,
    check_intruder_options,
    intruder_dimensions,
    left_basis,
)
from lora_audit.report import IntruderLayerReport, IntruderSummary


@dataclass(frozen=True, kw_only=True)
class IntruderOptions:
    """What ``--intruders`` computes.

    Attributes
    ----------
    top
        Top singular vectors of ``W + ΔW`` examined per layer (``--intruder-top``).
    epsilon
        Cosine threshold (``--intruder-epsilon``).
    layers
        Regular expression: only matching layer names (``--intruder-layers``); ``None``: all.
    cache
        Where ``W``'s bases are kept; ``None`` uses :meth:`BasisCache.default`.
    """

    top: int = DEFAULT_TOP
    epsilon: float = DEFAULT_EPSILON
    layers: str | None = None
    cache: BasisCache | None = None


def check_intruder_request(options: IntruderOptions) -> re.Pattern[str] | None:
    """Validate the options before any work; the compiled ``--intruder-layers`` pattern.

    Raises
    ------
    UsageError
        For ``top < 1``, ``ε`` outside ``(0, 1]``, a bad pattern, or a malformed
        ``$LORA_AUDIT_CACHE_MAX_BYTES``.
    """
    problem = check_intruder_options(options.top, options.epsilon)
    if problem is not None:
        flag = "--intruder-top" if options.top < 1 else "--intruder-epsilon"
        raise UsageError(f"{flag}: {problem}", hint="PEFT's defaults are top 10, ε = 0.5")
    if options.cache is None:
        try:
            max_bytes()
        except ValueError as exc:
            raise UsageError(
                f"--intruders: {exc}", hint="set it to a size in bytes, or 0 for no cache"
            ) from None
    if options.layers is None:
        return None
    from lora_audit.regex_guard import regex_problem

    hint = "e.g. --intruder-layers 'layer\\.(0|5)\\..*query'"
    if (why := regex_problem(options.layers)) is not None:
        raise UsageError(f"--intruder-layers {options.layers[:60]!r} is refused: {why}", hint=hint)
    try:
        return re.compile(options.layers)
    except re.error as exc:
        raise UsageError(
            f"--intruder-layers {options.layers!r} is not a regular expression: {exc}", hint=hint
        ) from None


def selected(
    layers: Sequence[LoraLayer], pattern: re.Pattern[str] | None, *, option: str
) -> list[LoraLayer]:
    """The layers whose name ``pattern`` finds (all without one); none is a usage error."""
    if pattern is None:
        return list(layers)
    from lora_audit.regex_guard import search_names

    hits = search_names(pattern, [x.name for x in layers], what=option)
    chosen = [layer for layer, hit in zip(layers, hits, strict=True) if hit]
    if not chosen:
        raise UsageError(
            f"{option} {pattern.pattern!r} matches none of the {len(layers)} matched layers",
            hint="e.g. " + (layers[0].name if layers else "layer names as inspect prints them"),
        )
    return chosen


def compute_intruders(
    adapter: Adapter,
    base: BaseModel,
    match: BaseMatch,
    *,
    options: IntruderOptions,
    device: DeviceName = "auto",
    warn: Warn | None = None,
    progress: Progress | None = None,
) -> dict[str, Intruders]:
    """:class:`Intruders` of every matched layer ``--intruder-layers`` selects, by name.

    ``progress`` counts every layer of the adapter once: those not examined at the start.
    """
    import numpy as np
    import torch

    from lora_audit.commands.base_weights import load_magnitudes, load_weights

    pattern = check_intruder_request(options)
    cache = options.cache if options.cache is not None else BasisCache.default()
    target = resolve_device(device)
    layers = selected(
        [x for x in adapter.layers if x.name in match.weights], pattern, option="--intruder-layers"
    )
    failed_store = False
    results: dict[str, Intruders] = {}
    if progress is not None:
        progress(len(adapter.layers) - len(layers))
    for layer in layers:
        like = torch.empty(0, dtype=torch.float64, device=target)
        w = load_weights(adapter, base, match, [layer], like=like)[0]
        b, a = (torch.from_numpy(x).to(like) for x in adapter.load_factors(layer))
        delta = layer.scale * (b @ a)
        if layer.dora and magnitude_key(layer) is not None:
            m = load_magnitudes(adapter, [layer], like=like)[0]
            direction = w + delta
            norms = torch.linalg.vector_norm(direction, dim=1)
            c = torch.where(norms > 0, m / norms.clamp_min(1e-300), torch.zeros_like(norms))
            delta = c.unsqueeze(1) * direction - w  # as linalg.dora.dora_scale: 0 for a zero row
        host = np.ascontiguousarray(w.cpu().numpy())
        key = basis_key(host)
        p = min(layer.out_features, layer.in_features)
        stored = cache.load(key, (layer.out_features, p))
        if stored is not None:
            basis = torch.from_numpy(stored).to(like)
        else:
            basis = left_basis(w)
            if not cache.store(key, np.ascontiguousarray(basis.cpu().numpy())):
                failed_store = True
        results[layer.name] = intruder_dimensions(
            w, delta, top=options.top, epsilon=options.epsilon, basis=basis
        )
        if progress is not None:
            progress(1)
    if failed_store and warn is not None and cache.limit > 0:
        warn(
            f"--intruders: could not store every base basis in {cache.folder} (not writable, "
            "full, or an entry above $LORA_AUDIT_CACHE_MAX_BYTES); the next audit recomputes them"
        )
    return results


def intruder_layer_report(found: Intruders) -> IntruderLayerReport:
    """The report's form of one layer's intruders."""
    return IntruderLayerReport(
        top=found.top,
        epsilon=found.epsilon,
        count=found.count,
        indices=found.indices,
        energy=found.energy,
        similarities=found.similarities,
        sigma=found.sigma,
    )


def intruder_summary(found: dict[str, Intruders], *, options: IntruderOptions) -> IntruderSummary:
    """Adapter-wide counts: layers examined, layers with intruders, intruders in all."""
    with_any = [name for name, x in found.items() if x.count]
    worst = max(found, key=lambda name: (found[name].count, found[name].energy), default=None)
    return IntruderSummary(
        top=options.top,
        epsilon=options.epsilon,
        layers_pattern=options.layers,
        layers_examined=len(found),
        layers_with_intruders=len(with_any),
        total=sum(x.count for x in found.values()),
        max_count=0 if worst is None else found[worst].count,
        max_layer=worst if worst is not None and found[worst].count else None,
    )
