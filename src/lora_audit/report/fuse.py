"""The fuse-survival part of ``inspect --base … --fuse-into``: what fusing into a quantized
weight keeps of each layer's update, and of the adapter's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class FuseLayerReport:
    """One layer fused into one quantization scheme.

    With ``Δ̂ = D(Q(W + ΔW)) − D(Q(W))`` (what the fused, quantized model adds to the
    quantized base; ``D`` dequantizes):

    Attributes
    ----------
    scheme
        ``q8_0``, ``q4_0``, ``nf4`` or ``mlx-4bit``.
    kept
        ``⟨Δ̂, ΔW⟩ / ‖ΔW‖²``: the share of the update the fused model keeps (1 exact, 0 lost);
        ``None`` for a zero update.
    relative_error
        ``‖Δ̂ − ΔW‖ / ‖ΔW‖``; ``None`` for a zero update.
    below_half_step
        Share of ``ΔW``'s entries smaller than half the quantization step of ``W``'s entry.
    requantized_kept, requantized_relative_error
        The same two numbers when the update is fused into the already quantized weight and
        quantized again (``Δ̂ = D(Q(D(Q(W)) + ΔW)) − D(Q(W))``: mlx-lm's ``fuse`` of a
        quantized model, PEFT's merge into a bitsandbytes 4-bit layer).
    fallback
        When the scheme cannot hold the tensor (a row length not a multiple of the block):
        ``"f16"`` when it is kept in float16, as llama.cpp's converter does,
        ``"unquantized"`` when it is left as it is, as mlx-lm does; ``None`` otherwise.
    """

    scheme: str
    kept: float | None
    relative_error: float | None
    below_half_step: float
    requantized_kept: float | None
    requantized_relative_error: float | None
    fallback: Literal["f16", "unquantized"] | None = None


@dataclass(frozen=True, kw_only=True)
class FuseSchemeSummary:
    """One scheme over every layer checked: ratios of the layers' totals.

    Attributes
    ----------
    scheme
        The quantization scheme.
    kept, relative_error, below_half_step, requantized_kept, requantized_relative_error
        As :class:`FuseLayerReport`, for the whole adapter (``Σ⟨Δ̂, ΔW⟩ / Σ‖ΔW‖²``, …).
    worst_layer, worst_kept
        The layer that keeps the least of its update (the smaller of ``kept`` and
        ``requantized_kept``), and how much; ``None`` when no layer has an update.
    fallback_layers
        Layers kept in float16 or unquantized because the scheme cannot hold them.
    """

    scheme: str
    kept: float | None
    relative_error: float | None
    below_half_step: float
    requantized_kept: float | None
    requantized_relative_error: float | None
    worst_layer: str | None
    worst_kept: float | None
    fallback_layers: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class FuseSummary:
    """Adapter-wide fuse survival and the advice drawn from it.

    Attributes
    ----------
    schemes
        One summary per scheme asked for, in the order ``q8_0``, ``q4_0``, ``nf4``,
        ``mlx-4bit``.
    advice
        One sentence: whether fusing is safe, and what to do if not.
    threshold
        The ``kept`` a scheme needs for fusing to be called safe.
    layers
        Layers checked.
    skipped_layers
        Adapted layers not checked (DoRA, whose fused weight is not ``W + s·B·A``).
    merge_dtype
        The precision ``W + ΔW`` is formed in before quantizing.
    """

    schemes: tuple[FuseSchemeSummary, ...]
    advice: str
    threshold: float
    layers: int
    skipped_layers: tuple[str, ...] = ()
    merge_dtype: Literal["float32"] = "float32"
