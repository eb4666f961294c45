"""``lora-audit extract BASE TUNED -o OUT``: the optimal LoRA of a full fine-tune, written as PEFT.

The pipeline: open both checkpoints and match their tensors
(:mod:`lora_audit.formats.full_model`) → per 2-D or conv weight, one at a time, ``ΔW`` in
float64 and its certified top triplets (:func:`lora_audit.linalg.delta.delta_spectrum`) → the
rank ``k`` (``--energy τ``: ``k@τ``; ``--rank K``: ``min(K, min(out, in))``) and the
Eckart–Young optimum ``ΔW_k = U_k Σ_k V_kᵀ``, stored as ``B = U_k Σ_k^{1/2}``,
``A = Σ_k^{1/2} V_kᵀ`` (float32) with ``lora_alpha = r`` per layer, so PEFT's scale is 1. No
clamping. The error of the factors as written is measured on the dense ``ΔW``.

Everything else is carried or reported, never dropped silently: a changed bias of a LoRA layer
as ``lora_B.bias`` (PEFT's ``lora_bias``, ``Δb``); every other changed module (norms,
embeddings, a layer whose weight did not change but whose bias did) whole, with its tuned
tensors, through ``modules_to_save``; tensors that are only in TUNED, differ in shape or are
not float are listed as not carried. The output directory is written atomically and never
over an input (:class:`~lora_audit.formats.output_guard.OutputGuard`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from lora_audit.choices import ExtractFormatName
from lora_audit.commands.adapter_info import TOOL
from lora_audit.commands.inspect_full import SPECTRAL, pair_tensors
from lora_audit.engine.batches import Progress, Warn
from lora_audit.engine.device import EngineOptions, require_torch, resolve_device
from lora_audit.errors import UsageError
from lora_audit.formats import atomic
from lora_audit.formats.full_model import FullPairing, TensorPair, load, open_pair
from lora_audit.formats.output_guard import OutputGuard
from lora_audit.formats.safetensors_io import (
    StoredTensor,
    encode_floats,
    stored_from_torch,
    write_safetensors,
)
from lora_audit.linalg.delta import HIGH_RANK_FRACTION, TOLERANCE, delta_spectrum
from lora_audit.linalg.krylov import KrylovOptions
from lora_audit.report.full_finetune import CarriedTensor, ExtractedLayer, ExtractReport

if TYPE_CHECKING:
    import torch

    from lora_audit.formats.base_model import BaseModel

PREFIX = "base_model.model."


@dataclass(frozen=True, kw_only=True)
class ExtractOptions:
    """How the rank of each layer is chosen, and where the result goes.

    Attributes
    ----------
    energy
        ``--energy τ``: each layer at its ``k@τ``.
    rank
        ``--rank K``: every layer at ``min(K, min(out, in))``.
    to
        Output format.
    force
        Replace an existing output (never an input).
    """

    energy: float | None = None
    rank: int | None = None
    to: ExtractFormatName = "peft"
    force: bool = False
    tolerance: float = TOLERANCE
    high_rank_fraction: float = HIGH_RANK_FRACTION
    engine: EngineOptions = field(default_factory=EngineOptions)
    krylov: KrylovOptions = field(default_factory=KrylovOptions)

    @property
    def selection(self) -> str:
        """``energy 0.9`` or ``rank 8``."""
        return f"energy {self.energy:g}" if self.energy is not None else f"rank {self.rank}"


@dataclass(frozen=True, kw_only=True)
class _Layer:
    """One extracted layer before writing: its report row and its factors."""

    report: ExtractedLayer
    b: torch.Tensor
    a: torch.Tensor
    pair: TensorPair


def check_extract_options(options: ExtractOptions) -> None:
    """Exactly one of ``energy`` and ``rank``, each in range (a usage error otherwise)."""
    if (options.energy is None) == (options.rank is None):
        raise UsageError(
            "extract needs exactly one of --energy and --rank", hint="e.g. --energy 0.9"
        )
    if options.energy is not None and not 0 < options.energy <= 1:
        raise UsageError(f"--energy {options.energy:g} is not in (0, 1]")
    if options.rank is not None and options.rank < 1:
        raise UsageError(f"--rank {options.rank} is below 1")


def extract(
    base: Path,
    tuned: Path,
    *,
    output: Path,
    options: ExtractOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> ExtractReport:
    """Write the optimal LoRA of ``tuned − base`` to ``output`` (module docstring)."""
    check_extract_options(options)
    require_torch("extract")
    device = resolve_device(options.engine.device)
    base_model, tuned_model, pairing = open_pair(base, tuned)
    guard = OutputGuard(force=options.force)
    guard.add_base(base)
    guard.add_base(tuned)
    guard.plan(output, role="--output", kind="directory", adapter=True)
    layers: list[_Layer] = []
    vectors: list[TensorPair] = []
    unchanged: list[str] = []
    for item in pairing.pairs:
        if item.kind in SPECTRAL:
            w, wt = pair_tensors(base_model, tuned_model, item, device=device)
            layer = _extract_layer(item, wt - w, options=options)
            if layer is None:
                unchanged.append(item.module)
            else:
                layers.append(layer)
        else:
            vectors.append(item)
        if progress is not None:
            progress(1)
    targets = {x.pair.module for x in layers}
    changed = [p for p in vectors if _changed(base_model, tuned_model, p)]
    carried, bias = _carried(changed, pairing, targets=targets)
    saved = sorted({c.key.rsplit(".", 1)[0] for c in carried if c.how == "modules_to_save"})
    tensors = _tensors(layers, bias, saved, (base_model, tuned_model), pairing)
    config = _config(layers, saved=saved, lora_bias=bool(bias), base=base)

    def weights(fh: IO[bytes]) -> None:
        write_safetensors(fh, tensors, metadata={})

    with guard.directory(output, role="--output") as tmp:
        _write(tmp / "adapter_model.safetensors", weights)
        _write(tmp / "adapter_config.json", (json.dumps(config, indent=2) + "\n").encode())
    not_carried = [c for c in carried if c.how == "not-carried"]
    if not_carried and warn is not None:
        warn(
            f"extract: {len(not_carried)} changed tensor(s) are not in the adapter (e.g. "
            f"{not_carried[0].key}: {not_carried[0].reason})"
        )
    return _report(base, tuned, output, options, layers, carried, unchanged, config)


def _write(path: Path, data: bytes | Callable[[IO[bytes]], None]) -> None:
    """Write and fsync one file inside the new (temporary) output directory."""
    with path.open("wb") as fh:
        atomic.fill(fh, data, sync=True)


def _extract_layer(
    item: TensorPair, delta: torch.Tensor, *, options: ExtractOptions
) -> _Layer | None:
    """The rank-k optimum of one ``ΔW`` (``None`` when ``ΔW = 0``)."""
    import torch

    spec = delta_spectrum(
        delta,
        tau=options.energy if options.energy is not None else 0.0,
        rank=options.rank,
        vectors=True,
        tolerance=options.tolerance,
        high_rank_fraction=options.high_rank_fraction,
        options=options.krylov,
    )
    if spec.total_energy == 0.0:
        return None
    assert spec.u is not None and spec.v is not None
    out, inp = item.matrix_shape
    k = spec.energy_rank if options.rank is None else min(options.rank, out, inp)
    root = spec.sigma[:k].sqrt()
    b = (spec.u[:, :k] * root).to(torch.float32)
    a = (root.unsqueeze(1) * spec.v[:, :k].mT).to(torch.float32)
    kept = float((spec.sigma[:k] ** 2).sum()) / spec.total_energy
    residual = delta - b.double() @ a.double()
    error = math.sqrt(float((residual * residual).sum()) / spec.total_energy)
    report = ExtractedLayer(
        name=item.module,
        shape=(out, inp),
        rank=k,
        frobenius_norm=math.sqrt(spec.total_energy),
        energy_kept=min(1.0, kept),
        optimal_error=math.sqrt(max(0.0, 1.0 - kept)),
        error=error,
        method=spec.method,
        high_rank=spec.high_rank,
        params=k * (out + inp),
    )
    return _Layer(report=report, b=b, a=a, pair=item)


def _changed(base: BaseModel, tuned: BaseModel, item: TensorPair) -> bool:
    return not np.array_equal(load(base, item.base_key), load(tuned, item.key))


def _carried(
    changed: list[TensorPair], pairing: FullPairing, *, targets: set[str]
) -> tuple[list[CarriedTensor], dict[str, TensorPair]]:
    """How each changed non-LoRA tensor is carried, and the LoRA layers' bias deltas."""
    carried: list[CarriedTensor] = []
    bias: dict[str, TensorPair] = {}
    for p in changed:
        if p.module in targets and p.base_key.endswith(".bias"):
            bias[p.module] = p
            carried.append(CarriedTensor(key=p.base_key, kind=p.kind, how="lora_bias"))
        elif p.module in targets or p.kind == "other":
            carried.append(
                CarriedTensor(
                    key=p.base_key,
                    kind=p.kind,
                    how="not-carried",
                    reason="a tensor of a LoRA layer that PEFT cannot hold",
                )
            )
        else:
            carried.append(CarriedTensor(key=p.base_key, kind=p.kind, how="modules_to_save"))
    for key in pairing.only_tuned:
        carried.append(
            CarriedTensor(key=key, kind="other", how="not-carried", reason="not in the base")
        )
    for key, why in pairing.mismatched:
        carried.append(CarriedTensor(key=key, kind="other", how="not-carried", reason=why))
    return carried, bias


def _tensors(
    layers: list[_Layer],
    bias: Mapping[str, TensorPair],
    saved: list[str],
    models: tuple[BaseModel, BaseModel],
    pairing: FullPairing,
) -> dict[str, StoredTensor]:
    """The adapter's tensors, PEFT's keys (``base_model.model.<module>.lora_A.weight``, …)."""
    import torch

    base, tuned = models
    tensors: dict[str, StoredTensor] = {}
    for x in layers:
        p = x.pair
        extra = p.shape[2:]
        a = x.a.reshape(x.a.shape[0], *(p.shape[1:] if extra else (x.a.shape[1],)))
        b = x.b.reshape(x.b.shape[0], x.b.shape[1], *(1 for _ in extra))
        tensors[f"{PREFIX}{p.module}.lora_A.weight"] = stored_from_torch(a.contiguous().cpu())
        tensors[f"{PREFIX}{p.module}.lora_B.weight"] = stored_from_torch(b.contiguous().cpu())
        if bias:
            out = p.shape[0]
            delta = torch.zeros(out, dtype=torch.float64)
            if p.module in bias:
                q = bias[p.module]
                new = load(tuned, q.key).astype(np.float64)
                delta = torch.from_numpy(new - load(base, q.base_key).astype(np.float64))
            tensors[f"{PREFIX}{p.module}.lora_B.bias"] = stored_from_torch(delta.float())
    for p in pairing.pairs:
        if p.module in saved:
            values = np.asarray(load(tuned, p.key), dtype=np.float64)
            tensors[f"{PREFIX}{p.base_key}"] = encode_floats(values, p.dtype)
    return tensors


def _config(
    layers: list[_Layer], *, saved: list[str], lora_bias: bool, base: Path
) -> dict[str, object]:
    """``adapter_config.json``: one rank as ``r``, the others in ``rank_pattern`` (α = r)."""
    ranks = Counter(x.report.rank for x in layers)
    r = max(ranks, key=lambda k: (ranks[k], k)) if ranks else 1
    pattern = {x.pair.module: x.report.rank for x in layers if x.report.rank != r}
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": str(base),
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": {name: float(k) for name, k in pattern.items()},
        "target_modules": [x.pair.module for x in layers],
        "modules_to_save": saved or None,
        "lora_bias": lora_bias,
        "bias": "none",
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def _report(
    base: Path,
    tuned: Path,
    output: Path,
    options: ExtractOptions,
    layers: list[_Layer],
    carried: list[CarriedTensor],
    unchanged: list[str],
    config: Mapping[str, object],
) -> ExtractReport:
    rows = tuple(x.report for x in layers)
    e2 = sum(r.frobenius_norm**2 for r in rows)
    total = math.sqrt(sum((r.error * r.frobenius_norm) ** 2 for r in rows) / e2) if e2 else 0.0
    pattern = config["rank_pattern"]
    assert isinstance(pattern, dict)
    return ExtractReport(
        tool=TOOL,
        base=str(base),
        tuned=str(tuned),
        output=str(output),
        output_format=options.to,
        selection=options.selection,
        layers=rows,
        carried=tuple(carried),
        unchanged=tuple(unchanged),
        rank=int(str(config["r"])),
        rank_pattern=dict(pattern),
        params=sum(r.params for r in rows),
        max_error=max((r.error for r in rows), default=0.0),
        total_error=total,
    )
