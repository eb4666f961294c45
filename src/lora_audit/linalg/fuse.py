"""How much of an update survives being fused into a quantized weight (pure math).

Fusing ``ΔW`` into a weight that is then quantized stores ``D(Q(W + ΔW))``; the model
without the adapter would have held ``D(Q(W))``. What the fused model actually adds is
``Δ̂ = D(Q(W + ΔW)) − D(Q(W))``. Over a layer (sums over its entries, all in float64):

* ``kept = ⟨Δ̂, ΔW⟩ / ‖ΔW‖²``: the share of ``ΔW`` that ``Δ̂`` carries (the coefficient of
  ``Δ̂``'s projection on ``ΔW``); 1 when fusing is exact, 0 when ``Δ̂`` is unrelated to it;
* ``relative_error = ‖Δ̂ − ΔW‖ / ‖ΔW‖``: how far the fused update is from the trained one;
* ``below_half_step``: the share of ``ΔW``'s entries smaller than half the quantization step
  of ``W``'s entry (changes that rounding to that grid alone cannot represent).

The same three numbers are given for a second way of fusing: into a model that is already
quantized (mlx-lm's ``fuse`` of a quantized model, PEFT's ``merge`` into a bitsandbytes 4-bit
layer, a LoRA baked into a quantized diffusion model). Those dequantize, add and quantize
again, so the fused weight is ``D(Q(D(Q(W)) + ΔW))``: ``D(Q(W))`` sits on the grid already,
and every entry of ``ΔW`` below half a step rounds back to where it was. Merging at full
precision and quantizing once dithers those small changes instead (``kept`` stays near 1 on
average, at the price of ``relative_error``); requantizing erases them.

The sums of :class:`FuseSums` add over row chunks and over layers, so a whole adapter's
numbers are ratios of totals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lora_audit.linalg.quantize import Fallback, Scheme, quantize


@dataclass(frozen=True, kw_only=True)
class FuseSums:
    """Additive totals of one chunk, layer or adapter under one scheme.

    Attributes
    ----------
    update
        ``‖ΔW‖²``.
    projected
        ``⟨Δ̂, ΔW⟩``.
    error
        ``‖Δ̂ − ΔW‖²``.
    below
        Entries of ``ΔW`` below half the quantization step.
    entries
        Entries counted.
    fallback
        ``"f16"`` or ``"unquantized"`` when the scheme could not hold the tensor.
    """

    update: float = 0.0
    projected: float = 0.0
    error: float = 0.0
    below: int = 0
    entries: int = 0
    fallback: Fallback | None = None

    def __add__(self, other: FuseSums) -> FuseSums:
        return FuseSums(
            update=self.update + other.update,
            projected=self.projected + other.projected,
            error=self.error + other.error,
            below=self.below + other.below,
            entries=self.entries + other.entries,
            fallback=self.fallback or other.fallback,
        )

    @property
    def kept(self) -> float | None:
        """``⟨Δ̂, ΔW⟩ / ‖ΔW‖²``; ``None`` for a zero update."""
        return self.projected / self.update if self.update > 0 else None

    @property
    def relative_error(self) -> float | None:
        """``‖Δ̂ − ΔW‖ / ‖ΔW‖``; ``None`` for a zero update."""
        return float(np.sqrt(self.error / self.update)) if self.update > 0 else None

    @property
    def below_half_step(self) -> float:
        """Share of entries below half a quantization step (0 for no entries)."""
        return self.below / self.entries if self.entries else 0.0


@dataclass(frozen=True, kw_only=True)
class FusePair:
    """:class:`FuseSums` of both ways of fusing: merged at full precision then quantized
    (``full``), and added to the dequantized weight then quantized again (``requantized``)."""

    full: FuseSums = FuseSums()
    requantized: FuseSums = FuseSums()

    def __add__(self, other: FusePair) -> FusePair:
        return FusePair(
            full=self.full + other.full, requantized=self.requantized + other.requantized
        )


def fuse_sums(
    w: npt.NDArray[np.floating], delta: npt.NDArray[np.float64], scheme: Scheme
) -> FusePair:
    """:class:`FuseSums` of ``W`` and ``ΔW`` (same shape, the stored tensor's layout).

    A fused weight is the sum added in float64 and rounded once to float32, the precision
    the quantizers read (a merge in bf16 or fp16 would round it a second time).

    Parameters
    ----------
    w : ndarray of shape (rows, cols)
        The pretrained weight as stored (bf16/fp16/fp32; exact in float32).
    delta : ndarray of shape (rows, cols), float64
        The update ``ΔW`` in the same layout.
    scheme
        The quantizer (see :mod:`lora_audit.linalg.quantize`).

    Returns
    -------
    FusePair
    """
    w32 = np.asarray(w, dtype=np.float32)
    base = quantize(w32, scheme)
    assert base.step is not None
    below = int(np.count_nonzero(np.abs(delta) < 0.5 * base.step.astype(np.float64)))
    update = float(np.einsum("ij,ij->", delta, delta))
    sums = []
    for start in (w32, base.values):
        fused = (start.astype(np.float64) + delta).astype(np.float32)
        dhat = quantize(fused, scheme, with_step=False).values.astype(np.float64)
        dhat -= base.values
        projected = float(np.einsum("ij,ij->", dhat, delta))
        dhat -= delta
        sums.append(
            FuseSums(
                update=update,
                projected=projected,
                error=float(np.einsum("ij,ij->", dhat, dhat)),
                below=below,
                entries=int(delta.size),
                fallback=base.fallback,
            )
        )
    return FusePair(full=sums[0], requantized=sums[1])
