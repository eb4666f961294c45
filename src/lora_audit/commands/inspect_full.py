"""Audit a full fine-tune (``inspect --base BASE TUNED``): the spectrum of every ``ΔW``.

The pipeline: open both checkpoints and match their tensors
(:mod:`lora_audit.formats.full_model`) → for each 2-D or conv weight, one at a time, load
``W_base`` and ``W_tuned`` in float64 on the compute device, form ``ΔW`` (exact) and take its
certified top spectrum (:func:`lora_audit.linalg.delta.delta_spectrum`), ``σ₁`` of ``W`` and
of ``W + ΔW`` by Krylov, the Frobenius norms exactly → :class:`FullLayerReport`; embeddings,
biases and norm weights get their exact norms (:class:`FullTensorReport`) → the summary.
Memory: a few copies of the largest layer.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lora_audit.commands.adapter_info import TOOL
from lora_audit.engine.batches import Progress, Warn
from lora_audit.engine.device import EngineOptions, require_torch, resolve_device
from lora_audit.errors import InputError
from lora_audit.formats.base_model import BaseModel
from lora_audit.formats.full_model import FullPairing, TensorPair, load, open_pair
from lora_audit.linalg.delta import HIGH_RANK_FRACTION, TOLERANCE, delta_spectrum
from lora_audit.linalg.krylov import KrylovOptions, top_triplets
from lora_audit.linalg.operators import Operator
from lora_audit.report.full_finetune import (
    FullFinetuneReport,
    FullLayerReport,
    FullSettings,
    FullSummary,
    FullTensorReport,
)

if TYPE_CHECKING:
    import torch

#: Tensor kinds that get a spectrum.
SPECTRAL = ("linear", "conv")


@dataclass(frozen=True, kw_only=True)
class FullOptions:
    """What ``inspect --base BASE TUNED`` computes.

    Attributes
    ----------
    energy
        τ of ``k@τ``.
    tolerance
        Certified relative accuracy of every ``σᵢ`` of ``ΔW``.
    high_rank_fraction
        Take LAPACK's full SVD once ``k`` would exceed this fraction of ``min(out, in)``.
    engine
        The compute device.
    krylov
        Settings of the iterative triplets of ``W`` and ``W + ΔW``.
    """

    energy: float = 0.9
    tolerance: float = TOLERANCE
    high_rank_fraction: float = HIGH_RANK_FRACTION
    engine: EngineOptions = field(default_factory=EngineOptions)
    krylov: KrylovOptions = field(default_factory=KrylovOptions)


def inspect_full(
    tuned: Path,
    *,
    base: Path,
    options: FullOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> FullFinetuneReport:
    """The audit of the full fine-tune ``tuned`` against ``base`` (module docstring).

    Raises
    ------
    InputError
        When a checkpoint cannot be read, ``tuned`` is an adapter, nothing matches, or a
        tensor holds NaN or Inf.
    """
    require_torch("inspect --base on a full model")
    device = resolve_device(options.engine.device)
    base_model, tuned_model, pairing = open_pair(base, tuned)
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    layers: list[FullLayerReport] = []
    tensors: list[FullTensorReport] = []
    for item in pairing.pairs:
        w, wt = pair_tensors(base_model, tuned_model, item, device=device)
        if item.kind in SPECTRAL:
            layers.append(_layer(item, w, wt, options=options))
        else:
            tensors.append(_tensor(item, w, wt))
        if progress is not None:
            progress(1)
    if pairing.only_tuned:
        note(
            f"{len(pairing.only_tuned)} tensor(s) of TUNED are not in the base (e.g. "
            f"{pairing.only_tuned[0]}): listed under only_in_tuned, not audited"
        )
    if pairing.mismatched:
        note(
            f"{len(pairing.mismatched)} tensor(s) differ in shape or are not float (e.g. "
            f"{pairing.mismatched[0][0]}: {pairing.mismatched[0][1]}): listed, not audited"
        )
    high = [x.name for x in layers if x.high_rank]
    if high:
        note(
            f"{len(high)} of {len(layers)} layer(s) are high rank (k@τ above "
            f"{options.high_rank_fraction:.0%} of min(out, in)), e.g. {high[0]}: their spectra "
            "come from a full SVD, and a LoRA of the same energy is not much smaller"
        )
    return FullFinetuneReport(
        tool=TOOL,
        tuned=str(tuned),
        base=str(base),
        files=tuple(str(f) for f in (*tuned_model.files, *base_model.files)),
        settings=FullSettings(
            energy=options.energy,
            device=str(device),
            tolerance=options.tolerance,
            high_rank_fraction=options.high_rank_fraction,
        ),
        layers=tuple(layers),
        tensors=tuple(tensors),
        summary=_summary(layers, tensors, pairing=pairing),
        warnings=tuple(warnings),
    )


def pair_tensors(
    base: BaseModel, tuned: BaseModel, item: TensorPair, *, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_base, W_tuned)`` of one pair as float64 ``(out, in)`` matrices on ``device``.

    Raises
    ------
    InputError
        When either holds NaN or Inf.
    """
    import torch

    out, inp = item.matrix_shape
    pair = []
    for model, key in ((base, item.base_key), (tuned, item.key)):
        x = torch.from_numpy(load(model, key)).reshape(out, inp).to(device, torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise InputError(
                f"{model.path}: tensor {key!r} holds NaN or Inf",
                hint="the checkpoint is damaged; its ΔW is undefined",
            )
        pair.append(x)
    return pair[0], pair[1]


def _sigma1(m: torch.Tensor, krylov: KrylovOptions) -> float:
    if min(m.shape) <= 256:  # LAPACK is cheaper than Krylov on a flat spectrum
        import torch

        return float(torch.linalg.matrix_norm(m, ord=2))
    return float(top_triplets(Operator(w=m.unsqueeze(0)), k=1, options=krylov).sigma[0, 0])


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


def _layer(
    item: TensorPair, w: torch.Tensor, wt: torch.Tensor, *, options: FullOptions
) -> FullLayerReport:
    delta = wt - w  # float64: exact for bf16/f16/f32 (linalg.delta)
    spec = delta_spectrum(
        delta,
        tau=options.energy,
        tolerance=options.tolerance,
        high_rank_fraction=options.high_rank_fraction,
        options=options.krylov,
    )
    sigma = tuple(float(s) for s in spec.sigma)
    e = spec.total_energy
    cumulative = []
    running = 0.0
    for s in sigma:
        running += s * s
        cumulative.append(min(1.0, running / e) if e > 0 else 1.0)
    s1 = sigma[0] if sigma else 0.0
    wf2 = float((w * w).sum())
    mf2 = float((wt * wt).sum())
    s_w, s_m = _sigma1(w, options.krylov), _sigma1(wt, options.krylov)
    sr_w, sr_m = _ratio(wf2, s_w * s_w), _ratio(mf2, s_m * s_m)
    out, inp = item.matrix_shape
    return FullLayerReport(
        name=item.module,
        key=item.key,
        base_key=item.base_key,
        kind=item.kind,
        shape=(out, inp),
        weight_shape=item.shape,
        dtype=item.dtype,
        singular_values=sigma,
        frobenius_norm=math.sqrt(e),
        spectral_norm=s1,
        stable_rank=_ratio(e, s1 * s1) if e > 0 else 0.0,
        energy=tuple(cumulative),
        energy_rank=spec.energy_rank,
        energy_rank_exact=spec.energy_rank_exact,
        method=spec.method,
        high_rank=spec.high_rank,
        bound=spec.bound,
        weight_frobenius_norm=math.sqrt(wf2),
        weight_spectral_norm=s_w,
        weight_stable_rank=sr_w,
        merged_frobenius_norm=math.sqrt(mf2),
        merged_spectral_norm=s_m,
        merged_stable_rank=sr_m,
        stable_rank_change=sr_m - sr_w,
        relative_frobenius=_ratio(math.sqrt(e), math.sqrt(wf2)),
        relative_spectral=_ratio(s1, s_w),
        params=out * inp,
        params_at_rank=spec.energy_rank * (out + inp),
    )


def _tensor(item: TensorPair, w: torch.Tensor, wt: torch.Tensor) -> FullTensorReport:
    d2 = float(((wt - w) ** 2).sum())
    w2 = float((w * w).sum())
    return FullTensorReport(
        key=item.key,
        base_key=item.base_key,
        kind=item.kind,
        shape=item.shape,
        dtype=item.dtype,
        frobenius_norm=math.sqrt(d2),
        weight_frobenius_norm=math.sqrt(w2),
        relative_frobenius=_ratio(math.sqrt(d2), math.sqrt(w2)),
        changed=d2 > 0,
    )


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _summary(
    layers: Sequence[FullLayerReport],
    tensors: Sequence[FullTensorReport],
    *,
    pairing: FullPairing,
) -> FullSummary:
    changed = [x for x in layers if x.frobenius_norm > 0]
    w2 = sum(x.weight_frobenius_norm**2 for x in layers)
    d2 = sum(x.frobenius_norm**2 for x in layers)
    return FullSummary(
        layer_count=len(layers),
        changed_layers=len(changed),
        unchanged_layers=tuple(x.name for x in layers if x.frobenius_norm == 0),
        high_rank_layers=tuple(x.name for x in layers if x.high_rank),
        mean_stable_rank=_mean([x.stable_rank for x in changed]),
        max_stable_rank=max((x.stable_rank for x in changed), default=math.nan),
        mean_weight_stable_rank=_mean([x.weight_stable_rank for x in layers]),
        mean_merged_stable_rank=_mean([x.merged_stable_rank for x in layers]),
        mean_energy_rank=_mean([float(x.energy_rank) for x in changed]),
        total_relative_frobenius=math.sqrt(d2 / w2) if w2 > 0 else 0.0,
        params=sum(x.params for x in layers),
        params_at_rank=sum(x.params_at_rank for x in layers),
        max_bound=max((x.bound for x in changed), default=0.0),
        methods=dict(Counter(x.method for x in layers)),
        tensors_changed=sum(t.changed for t in tensors),
        only_in_tuned=pairing.only_tuned,
        only_in_base=pairing.only_base,
        mismatched=tuple(f"{k}: {why}" for k, why in pairing.mismatched),
    )
