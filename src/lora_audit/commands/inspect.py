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
from lora_audit.commands.advice_text import (
    NETWORK_ALPHA_FORMATS,
    AdviceContext,
    advice_basis,
    advice_lines,
    advice_reason,
)
from lora_audit.decisions.advice_rule import DEFAULT_ADVICE_RULE, AdviceRule
from lora_audit.decisions.audited import dora_flags
from lora_audit.decisions.compress_ranks import truncation
from lora_audit.decisions.retrain_advice import RankPlan, plan_retrain
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
        Fraction of layers the adapter-wide retraining rank must cover, in (0, 1]: the advice
        rule's quantile unless set (another value makes the rule ``custom``).
    advice
        The retraining-advice rule (its τ is its own, not ``energy``: see
        :mod:`lora_audit.decisions.advice_rule`).
    engine
        Device and method of the spectral engine.
    settings_file
        The settings file ``energy`` or ``coverage`` may have come from, as the report shows
        it; ``None`` when only defaults and flags applied.
    """

    energy: float = 0.99
    coverage: float = DEFAULT_ADVICE_RULE.quantile
    advice: AdviceRule = DEFAULT_ADVICE_RULE
    engine: EngineOptions = field(default_factory=EngineOptions)
    settings_file: str | None = None

    @property
    def rule(self) -> AdviceRule:
        """The advice rule at ``coverage`` (``custom`` when that is not its quantile)."""
        return self.advice.with_quantile(self.coverage)


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
        [sigmas[layer.name] for layer in adapter.layers],
        rule=options.rule,
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
    # never name a command that refuses (compress refuses an untrained adapter, too)
    command = command if compressible and not plan.untrained else None
    assumed = [layer for layer in layers if layer.scale_source == "assumed"]
    network_alpha = adapter_format in NETWORK_ALPHA_FORMATS
    ctx = AdviceContext(
        params=params, params_after=params_after, layer_count=len(layers),
        layer_ranks=tuple(sorted({layer.rank for layer in layers})), untrained=untrained,
        structured=any(layer.structure != "lora" for layer in layers),
        network_alpha=network_alpha, mean_stable_rank=sum(stable) / len(stable) if stable else 0.0,
        max_stable_rank=max(stable, default=0.0),
    )  # fmt: skip
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
        mean_stable_rank=ctx.mean_stable_rank,
        max_stable_rank=ctx.max_stable_rank,
        top_wasters=top,
        advice=advice_lines(
            plan, ctx, energy=energy, command=command, top_wasters=top,
            command_note=dora[1] if dora else None,
        ),
        wasted_params=params - params_after,
        compress_command=command,
        assumed_scale_layers=len(assumed),
        assumed_scales=tuple(sorted({layer.scale for layer in assumed})),
        keep_structure=plan.keep_structure,
        network_dims=tuple(sorted({lr.network_dim for lr in layers if lr.network_dim})),
        layer_ranks=ctx.layer_ranks,
        advice_verdict=plan.verdict,
        advice_reason=advice_reason(plan, ctx),
        advice_basis=advice_basis(plan.rule),
        retrain_energy_kept=None if plan.untrained else plan.energy_kept,
        network_alpha=plan.lora_alpha if network_alpha else None,
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
