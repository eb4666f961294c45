"""Run the base-aware audit (``inspect --base``) and add its results to a finished report.

The pipeline: open the base checkpoint and match every adapted layer to its pretrained
weight (:mod:`lora_audit.formats.base_model`) → for each group of equal-shape layers, load ``W``
and the factors in float64 on the compute device (:func:`lora_audit.engine.spectra.map_groups`, with
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
from typing import TYPE_CHECKING, Any

from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.engine.batches import (
    CPU_CHUNK_BYTES,
    GPU_MEMORY_FRACTION,
    WORKING_COPIES,
    Progress,
    Warn,
    group_layers,
    map_groups,
)
from lora_audit.engine.device import EngineOptions, require_torch, resolve_device
from lora_audit.errors import InputError, UsageError
from lora_audit.formats.base_model import (
    BaseMatch,
    BaseModel,
    BaseWeight,
    magnitude_key,
    match_layers,
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
from lora_audit.linalg.krylov import KrylovOptions
from lora_audit.report import BaseLayerReport, BaseStat, BaseSummary, InspectReport, LayerReport

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

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
    """

    path: Path
    k: int | None = None
    partial: bool = False
    krylov: KrylovOptions = field(default_factory=KrylovOptions)


def check_base_options(path: Path | None, *, k: int | None, partial: bool) -> None:
    """Fail early on ``--base`` options that cannot work, before any spectrum is computed.

    Raises
    ------
    UsageError
        For ``--base-k``/``--base-partial`` without ``--base``, or ``--base-k`` below 1.
    InputError
        When the base path does not exist.
    """
    if path is None:
        given = "--base-k" if k is not None else "--base-partial"
        raise UsageError(f"{given} needs --base", hint="add --base path/to/base-model")
    if k is not None and k < 1:
        raise UsageError(f"--base-k {k} must be at least 1")
    if not path.exists():
        raise InputError(f"--base {path}: no such file or directory")
    require_torch("--base")


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
    base = open_base(options.path)
    match = match_layers(adapter, base)
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
    layers = tuple(
        replace(layer, base=_layer_report(match.weights[layer.name], metrics[layer.name]))
        if layer.name in metrics
        else layer
        for layer in report.layers
    )
    summary = _summary(base, match, layers, options=options)
    return replace(
        report,
        layers=layers,
        summary=replace(report.summary, base=summary),
        warnings=(*report.warnings, *warnings),
    )


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
                w = _load_weights(adapter, base, match, chunk, like=b)
                magnitude = _load_magnitudes(adapter, chunk, like=b) if is_dora else None
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
            budget = _chunk_bytes(group[0], device=device, krylov=krylov, ks=ks)
            options = replace(engine, chunk_bytes=budget)
            results.update(map_groups(part, batch, options=options, progress=progress, warn=warn))
    return results


def _chunk_bytes(
    layer: LoraLayer, *, device: torch.device, krylov: KrylovOptions, ks: Mapping[str, int]
) -> int:
    """``EngineOptions.chunk_bytes`` that makes :func:`map_groups` take as many layers as fit.

    ``map_groups`` sizes chunks for the factors alone; here each layer also holds ``W``
    (stored, float64, and a working copy) and the Krylov bases of ``W`` and ``W + ΔW``.
    """
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * GPU_MEMORY_FRACTION / 2)
    else:
        budget = CPU_CHUNK_BYTES
    out, inp, r = layer.out_features, layer.in_features, layer.rank
    basis = min(min(out, inp), krylov.max_steps * (max([*ks.values(), r]) + krylov.oversample))
    per_layer = 8 * (3 * out * inp + 2 * (out + inp) * basis + basis * basis)
    fit = max(1, budget // max(per_layer, 1))
    factors = 8 * r * (out + inp) * WORKING_COPIES
    return fit * factors


def _load_weights(
    adapter: Adapter,
    base: BaseModel,
    match: BaseMatch,
    chunk: Sequence[LoraLayer],
    *,
    like: torch.Tensor,
) -> torch.Tensor:
    """``W`` of each layer of the chunk, shape (n, out, in), float64 on ``like``'s device."""
    import torch

    first = chunk[0]
    w = torch.empty(
        (len(chunk), first.out_features, first.in_features), dtype=like.dtype, device=like.device
    )
    for i, layer in enumerate(chunk):
        ref: BaseWeight = match.weights[layer.name]
        stored = base.load(ref, out_features=layer.out_features, in_features=layer.in_features)
        w[i].copy_(torch.from_numpy(stored))
        if not bool(torch.isfinite(w[i].sum())) and not bool(torch.isfinite(w[i]).all()):
            raise InputError(
                f"{ref.file}: tensor {ref.key!r} contains NaN or Inf",
                hint="the base checkpoint is corrupt",
            )
    return w


def _load_magnitudes(
    adapter: Adapter, chunk: Sequence[LoraLayer], *, like: torch.Tensor
) -> torch.Tensor:
    """DoRA magnitudes of each layer of the chunk, shape (n, out), float64."""
    import torch

    assert adapter.source is not None
    rows = []
    for layer in chunk:
        key = magnitude_key(layer)
        assert key is not None
        m = torch.from_numpy(adapter.source.get(key).reshape(-1))
        if m.numel() != layer.out_features:
            raise InputError(
                f"{adapter.tensor_file}: {key!r} has {m.numel()} values, but layer "
                f"{layer.name!r} has {layer.out_features} outputs",
                hint="the DoRA magnitude does not belong to this layer; the file is corrupt",
            )
        if not bool(torch.isfinite(m).all()):
            raise InputError(f"{adapter.tensor_file}: tensor {key!r} contains NaN or Inf")
        rows.append(m.to(device=like.device, dtype=like.dtype))
    return torch.stack(rows)


def _layer_report(weight: BaseWeight, m: BaseMetrics) -> BaseLayerReport:
    """The report's form of one layer's metrics: the same numbers, plus where W came from."""
    numbers = {f.name: getattr(m, f.name) for f in fields(m) if f.name != "dora"}
    return BaseLayerReport(
        key=weight.key,
        file=weight.file.name,
        transposed=weight.transpose,
        update="dora" if m.dora else "lora",
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


@dataclass(frozen=True, kw_only=True)
class DoraCompression:
    """``compress --base`` for a PEFT DoRA adapter: spectra and factors that keep DoRA exact.

    For each DoRA layer, ``sigmas`` holds the singular values of the row-scaled update
    ``X = diag(c)·s·B·A`` (``cᵢ = mᵢ / ‖Wᵢ + s(BA)ᵢ‖``), the part of DoRA's effective weight
    ``W′ = diag(c)·W + X`` that the factors carry; ``compress`` picks ranks on them, so its
    energy and error figures are exact for ``W′``: ``‖W′_k − W′‖_F = √(1 − C(k))·‖X‖_F``.
    :meth:`refactor` gives the truncated layers
    (:func:`lora_audit.linalg.against_base.dora_truncated`)
    with their new magnitudes.
    """

    adapter: Adapter
    base: BaseModel
    match: BaseMatch
    engine: EngineOptions
    sigmas: Mapping[str, npt.NDArray[np.float64]]

    @classmethod
    def prepare(
        cls,
        adapter: Adapter,
        base_path: Path,
        *,
        engine: EngineOptions,
        warn: Warn | None = None,
    ) -> DoraCompression | None:
        """Open the base and compute the DoRA layers' spectra; ``None`` without DoRA layers.

        Raises
        ------
        UsageError
            For kohya/LyCORIS DoRA (``dora_scale``), whose normalisation is not PEFT's.
        InputError
            When a DoRA layer has no matching base weight.
        """
        dora = [layer for layer in adapter.layers if layer.dora]
        if not dora:
            if warn is not None:
                warn("--base: the adapter has no DoRA layers; the base weights are not needed")
            return None
        kohya = [layer.name for layer in dora if magnitude_key(layer) is None]
        if kohya:
            raise UsageError(
                f"{adapter.path}: --base handles PEFT DoRA (lora_magnitude_vector); "
                f"{len(kohya)} layer(s) store kohya/LyCORIS dora_scale, e.g. {kohya[0]!r}",
                hint="drop --base and pass --allow-dora to compress B·A with the scales kept",
            )
        import torch

        check_base_options(base_path, k=None, partial=False)
        subset = replace(adapter, layers=tuple(dora))
        base = open_base(base_path)
        match = match_layers(subset, base)
        if match.unmatched:
            raise unmatched_error(base, match, layer_count=len(dora))

        def batch(
            chunk: Sequence[LoraLayer], b: torch.Tensor, a: torch.Tensor
        ) -> list[npt.NDArray[np.float64]]:
            from lora_audit.linalg.dora import dora_row_scale
            from lora_audit.linalg.spectral import singular_values

            w = _load_weights(subset, base, match, chunk, like=b)
            m = _load_magnitudes(subset, chunk, like=b)
            scales = [layer.scale for layer in chunk]
            c = dora_row_scale(w, b, a, scales=scales, magnitude=m)
            s = torch.tensor(scales, dtype=b.dtype, device=b.device).reshape(-1, 1, 1)
            sigma = singular_values(c.unsqueeze(-1) * (b * s), a, method="qr").cpu().numpy()
            return [sigma[i] for i in range(len(chunk))]

        sigmas = _map_with_weights(subset, batch, engine=engine, warn=warn)
        return cls(adapter=subset, base=base, match=match, engine=engine, sigmas=sigmas)

    def refactor(self, ranks: Mapping[str, int], *, warn: Warn | None = None) -> dict[str, Any]:
        """The truncated DoRA layers as :class:`~lora_audit.formats.writer.NewLayer` objects.

        Each carries its new ``lora_magnitude_vector`` in ``extra`` (stored shape and dtype).
        """
        from lora_audit.formats.safetensors_io import SafetensorsSource, encode_floats
        from lora_audit.formats.writer import new_layer, stored_dtypes

        todo = replace(
            self.adapter, layers=tuple(x for x in self.adapter.layers if x.name in ranks)
        )
        if not todo.layers:
            return {}

        def batch(chunk: Sequence[LoraLayer], b: torch.Tensor, a: torch.Tensor) -> list[Any]:
            from lora_audit.linalg.dora import dora_truncated

            w = _load_weights(todo, self.base, self.match, chunk, like=b)
            m = _load_magnitudes(todo, chunk, like=b)
            truncated = dora_truncated(
                w,
                b,
                a,
                scales=[layer.scale for layer in chunk],
                magnitude=m,
                ranks=[ranks[layer.name] for layer in chunk],
            )
            assert todo.source is not None
            out = []
            for layer, (b_k, a_k, m_k) in zip(chunk, truncated, strict=True):
                key = magnitude_key(layer)
                assert key is not None
                assert isinstance(todo.source, SafetensorsSource)
                stored = todo.source.header.tensors[key]
                magnitude = m_k.cpu().double().numpy().reshape(stored.shape)
                out.append(
                    new_layer(
                        layer,
                        b=b_k.cpu().double().numpy(),
                        a=a_k.cpu().double().numpy(),
                        extra={key: encode_floats(magnitude, stored.dtype)},
                        dtypes=stored_dtypes(todo, layer),
                    )
                )
            return out

        return _map_with_weights(todo, batch, engine=self.engine, warn=warn)


def _map_with_weights(
    adapter: Adapter, fn: Any, *, engine: EngineOptions, warn: Warn | None
) -> dict[str, Any]:
    """:func:`map_groups` with chunks sized for the base weights each layer also loads."""
    require_torch("--base")
    device = resolve_device(engine.device)
    results: dict[str, Any] = {}
    krylov = KrylovOptions(max_steps=0)
    for group in group_layers(adapter.layers):
        part = replace(adapter, layers=tuple(group))
        budget = _chunk_bytes(group[0], device=device, krylov=krylov, ks={})
        results.update(map_groups(part, fn, options=replace(engine, chunk_bytes=budget), warn=warn))
    return results
