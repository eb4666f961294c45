"""Turn an :class:`~lora_audit.adapter.Adapter` into a finished :class:`InspectReport`.

This is the pipeline's "run" step: spectra from the engine, metrics per layer, the policy's
retraining plan, and the advice text, assembled into frozen report objects.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.commands.adapter_info import TOOL, adapter_info
from lora_audit.decisions.audited import dora_flags
from lora_audit.decisions.compress_ranks import truncation
from lora_audit.decisions.retrain_advice import RankPlan, plan_retrain, retrain_verdict
from lora_audit.engine.batches import Progress, Warn
from lora_audit.engine.device import EngineOptions, device_type
from lora_audit.engine.spectra import spectra
from lora_audit.formats.accounted import require_read
from lora_audit.formats.patterns import pattern_keys
from lora_audit.formats.peft_variants import compress_refusal
from lora_audit.linalg.metrics import SpectrumSummary, summarize
from lora_audit.report import (
    InspectReport,
    LayerReport,
    Settings,
    Summary,
)

#: How many layers the summary names as the biggest wasters.
TOP_WASTERS = 5


@dataclass(frozen=True, kw_only=True)
class AuditOptions:
    """What the audit measures and advises.

    Attributes
    ----------
    energy
        τ in (0, 1]: each layer's energy rank keeps at least this fraction of ‖ΔW‖_F².
    coverage
        Fraction of layers the adapter-wide retraining rank must cover, in (0, 1].
    engine
        Device and method of the spectral engine.
    settings_file
        The settings file ``energy`` or ``coverage`` may have come from, as the report shows
        it; ``None`` when only defaults and flags applied.
    """

    energy: float = 0.99
    coverage: float = 0.9
    engine: EngineOptions = field(default_factory=EngineOptions)
    settings_file: str | None = None


def inspect_adapter(
    adapter: Adapter,
    *,
    options: AuditOptions,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> InspectReport:
    """Measure every layer of ``adapter`` and build the report."""
    engine_warnings: list[str] = []

    def collect(message: str) -> None:
        engine_warnings.append(message)
        if warn is not None:
            warn(message)

    sigmas = spectra(adapter, options=options.engine, progress=progress, warn=collect)
    require_read(adapter, warned=engine_warnings)  # every LoRA tensor of the file was read
    summaries = [summarize(sigmas[layer.name], energy=options.energy) for layer in adapter.layers]
    layers = tuple(
        _layer_report(layer, summary)
        for layer, summary in zip(adapter.layers, summaries, strict=True)
    )
    rslora = bool(adapter.config.get("use_rslora", False))
    plan = plan_retrain(
        adapter.layers,
        [s.energy_rank for s in summaries],
        coverage=options.coverage,
        pattern_key=pattern_keys([layer.name for layer in adapter.layers]).__getitem__,
        rslora=rslora,
    )
    device = device_type(options.engine.device)
    return InspectReport(
        tool=TOOL,
        adapter=adapter_info(adapter),
        settings=Settings(
            energy=options.energy,
            coverage=options.coverage,
            device=device,
            method=options.engine.method,
            settings_file=options.settings_file,
        ),
        layers=layers,
        summary=_summary(
            layers,
            plan,
            energy=options.energy,
            compressible=compress_refusal(adapter) is None,
            path=str(adapter.path),
            adapter_format=adapter.format,
        ),
        warnings=(*adapter.warnings, *engine_warnings),
    )


def _layer_report(layer: LoraLayer, s: SpectrumSummary) -> LayerReport:
    k = s.energy_rank
    if k == 0:  # untrained: all of it is waste (drop it from target_modules)
        new_rank, params_after = 0, 0
    else:  # what `compress --energy τ` keeps of it
        cut = truncation(
            rank=layer.rank,
            params=layer.params,
            out_features=layer.out_features,
            in_features=layer.in_features,
            k=k,
        )
        new_rank, params_after = cut.new_rank, cut.params_after
    return LayerReport(
        name=layer.name,
        kind=layer.kind.value,
        shape=(layer.out_features, layer.in_features),
        weight_shape=layer.weight_shape,
        rank=layer.rank,
        alpha=layer.alpha,
        scale=layer.scale,
        dtype=layer.dtype,
        dora=layer.dora,
        singular_values=s.singular_values,
        frobenius_norm=s.frobenius_norm,
        spectral_norm=s.spectral_norm,
        stable_rank=s.stable_rank,
        effective_rank=s.effective_rank,
        energy=s.energy,
        energy_rank=k,
        recommended_rank=k,
        wasted_rank=layer.rank - new_rank,
        params=layer.params,
        params_after=params_after,
        untrained=s.spectral_norm == 0.0,
        structure=layer.structure.value,
        network_dim=layer.network_dim,
        scale_source=layer.scale_source,
        mostly_wasted=(layer.params - params_after) * 2 > layer.params,
    )


def _summary(
    layers: Sequence[LayerReport],
    plan: RankPlan,
    *,
    energy: float,
    compressible: bool = True,
    path: str = "ADAPTER",
    adapter_format: str = "peft",
) -> Summary:
    params = sum(layer.params for layer in layers)
    params_after = sum(layer.params_after for layer in layers)
    untrained = tuple(layer.name for layer in layers if layer.untrained)
    trained = [layer for layer in layers if not layer.untrained]
    stable = [layer.stable_rank for layer in trained]
    nominal = max((layer.rank for layer in layers), default=0)
    # the parameters `compress --energy τ` removes (and untrained layers), over all stored:
    # Σ(r − k)(in + out) / Σ r(in + out) for plain LoRA; for LoHa/LoKr/Tucker only what
    # rewriting them as plain LoRA at k saves, so the figure never promises more than compress does
    wasted_fraction = sum(layer.wasted_params for layer in layers) / params if params else 0.0
    wasters = sorted(
        (layer for layer in layers if layer.wasted_params > 0),
        key=lambda layer: (-layer.wasted_params, layer.name),
    )
    top = tuple(layer.name for layer in wasters[:TOP_WASTERS])
    dora = dora_flags(adapter_format) if any(layer.dora for layer in layers) else None
    command = compress_command(path, energy=energy, dora=dora) if params_after < params else None
    command = command if compressible else None  # never name a command that refuses
    assumed = [layer for layer in layers if layer.scale_source == "assumed"]
    return Summary(
        layer_count=len(layers),
        untrained_layers=untrained,
        nominal_rank=nominal,
        recommended_rank=plan.rank,
        lora_alpha=plan.lora_alpha,
        rank_pattern=plan.rank_pattern,
        alpha_pattern=plan.alpha_pattern,
        layers_covered=plan.layers_covered,
        params=params,
        params_after=params_after,
        params_retrain=plan.params,
        wasted_fraction=wasted_fraction,
        mean_stable_rank=sum(stable) / len(stable) if stable else 0.0,
        max_stable_rank=max(stable, default=0.0),
        top_wasters=top,
        advice=_advice(
            plan, energy=energy, nominal=nominal, untrained=untrained,
            params=params, params_after=params_after, layer_count=len(layers),
            structured=any(layer.structure != "lora" for layer in layers),
            command=command, top_wasters=top, command_note=dora[1] if dora else None,
        ),
        wasted_params=params - params_after,
        compress_command=command,
        assumed_scale_layers=len(assumed),
        assumed_scales=tuple(sorted({layer.scale for layer in assumed})),
        keep_structure=plan.keep_structure,
        network_dims=tuple(sorted({lr.network_dim for lr in layers if lr.network_dim})),
    )  # fmt: skip


def compress_command(path: str, *, energy: float, dora: tuple[str, str] | None = None) -> str:
    """The ``lora-audit compress`` line for this adapter, its path shell-quoted as given.

    The output sits next to the input: ``DIR-compressed`` or ``NAME-compressed.safetensors``.
    A DoRA adapter gets the flags compress needs to run on it and what they mean
    (:func:`~lora_audit.decisions.audited.dora_flags`: ``--base BASE`` or ``--allow-dora``),
    since its magnitudes depend on the base weights.
    """
    source = path.rstrip("/") or path
    stem, dot, suffix = source.rpartition(".")
    plain = not dot or "/" in suffix or suffix != "safetensors"
    out = f"{source}-compressed" if plain else f"{stem}-compressed.{suffix}"
    pct = f"{energy:.4g}"
    flags = f" {dora[0]}" if dora else ""
    return f"lora-audit compress {shlex.quote(path)} -o {shlex.quote(out)} --energy {pct}{flags}"


def _advice(
    plan: RankPlan,
    *,
    energy: float,
    nominal: int,
    untrained: Sequence[str],
    params: int,
    params_after: int,
    layer_count: int,
    structured: bool,
    command: str | None = None,
    top_wasters: Sequence[str] = (),
    command_note: str | None = None,
) -> tuple[str, ...]:
    """What to do, gain first: truncate now (the exact command), then how to retrain."""
    lines: list[str] = []
    pct = f"{energy:.4g}".rstrip("0")
    if command is not None:
        saved = 1 - params_after / params
        most = f"; most in {', '.join(top_wasters[:3])}" if top_wasters else ""
        lines.append(
            f"Truncate now to drop {params - params_after:,} of {params:,} parameters "
            f"({saved:.1%}) and keep ≥{pct} of every layer's energy{most}: `{command}`"
            + (f" ({command_note})" if command_note else "")
        )
    verdict = retrain_verdict(
        keep_structure=plan.keep_structure,
        rank=plan.rank,
        nominal=nominal,
        patterned=bool(plan.rank_pattern),
    )
    if verdict == "keep-structure":
        lines.append(
            f"Keep the LyCORIS structure as trained: plain LoRA at the ranks these layers need "
            f"at τ={pct} would take {plan.lora_params:,} parameters, not fewer than the "
            f"{params:,} they store."
        )
    elif verdict == "retrain":
        alpha = f", lora_alpha={plan.lora_alpha:g}" if plan.lora_alpha is not None else ""
        extra = (
            f", with a rank_pattern for {len(plan.rank_pattern)} layer(s)"
            if plan.rank_pattern
            else ""
        )
        plain = " as plain LoRA" if structured else ""
        lines.append(
            f"Retrain{plain} at r={plan.rank}{alpha}{extra}: it covers {plan.layers_covered} of "
            f"{layer_count} layers at τ={pct} and needs {plan.params:,} parameters "
            f"instead of {params:,}."
        )
    else:
        lines.append(
            f"Retrain at the same r={nominal}: at τ={pct}, {plan.coverage:.0%} of the trained "
            f"layers need up to {plan.quantile} of its ranks, and a smaller power of two would "
            "cut into them (a low stable rank says the energy is concentrated, not that the "
            f"last {1 - energy:.2g} of it fits in fewer ranks)."
        )
    if untrained:
        lines.append(
            f"{len(untrained)} layer(s) are untrained (ΔW = 0); drop them from target_modules."
        )
    return tuple(lines)
