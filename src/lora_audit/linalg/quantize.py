"""Weight quantizers as serving stacks apply them, for ``inspect --fuse-into`` (pure math).

Each scheme maps a float32 matrix ``X`` (the stored tensor's layout) to its dequantized form
``D(Q(X))`` and, per entry, the width of the quantization step that entry was rounded to.
They are ports of the real implementations, operation for operation, so that the result is
bit for bit theirs (the tests compare with the libraries themselves):

``q8_0`` / ``q4_0``
    llama.cpp's reference quantizers as the ``gguf`` package implements them
    (``gguf.quants.Q8_0`` / ``Q4_0``, "bit-exact with ggml-quants.c"): blocks of 32 along each
    row; Q8_0 has ``d = max|x|/127`` and ``q = round(x/d)`` (half away from zero); Q4_0 takes
    the entry of largest magnitude ``m`` (with its sign), ``d = m/−8`` and
    ``q = min(15, trunc(x/d + 8.5))``, value ``d·(q − 8)``. ``d`` is stored as float16. A row
    whose length is not a multiple of 32 cannot be quantized; llama.cpp's converter keeps
    such tensors in float16, and so does this (``fallback = "f16"``).
``nf4``
    bitsandbytes' NF4 (``quantize_4bit(..., quant_type="nf4", compress_statistics=True)``,
    what ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True)`` does):
    the flattened tensor in blocks of 64, ``absmax`` per block, each entry scaled by
    ``1/absmax`` and rounded to the nearest of the 16 NF4 levels; then the absmax values
    themselves are quantized (double quantization): their mean is subtracted and they are
    rounded in blocks of 256 to bitsandbytes' 8-bit dynamic code the way its CPU kernel
    does (``x·(1/absmax₂)`` looked up in a 65536-entry table of nearest levels), and
    dequantized ``absmax = code[q]·absmax₂ + mean``. Done in torch float32, as bitsandbytes
    does on the CPU (version 0.50).
``mlx-4bit``
    MLX's affine quantization (``mx.quantize(w, group_size=64, bits=4)``, what
    ``mlx_lm.convert -q`` and ``mlx_lm.fuse`` of a 4-bit model use): groups of 64 along each
    row, ``scale = ±max((max − min)/15, 1e-7)`` signed towards the edge of larger magnitude,
    that edge made exactly representable (``scale = edge/round(edge/scale)``, ``bias = edge``,
    unless that rounds to 0), ``q = clip(round((x − bias)/scale), 0, 15)``, value
    ``scale·q + bias``; on a float32 weight. A row whose length is not a multiple of 64 is
    left unquantized, as mlx-lm's quantization predicate does (``fallback = "unquantized"``).

The step of an entry is ``|d|`` for Q8_0/Q4_0, the width of the NF4 bin (between the
midpoints around its level, times the block's dequantized absmax) for NF4, and the float16
spacing at the value for the float16 fallback.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

Float32Array = npt.NDArray[np.float32]

#: The schemes ``--fuse-into`` knows, in the order reports list them.
Scheme = Literal["q8_0", "q4_0", "nf4", "mlx-4bit"]
SCHEMES: tuple[Scheme, ...] = ("q8_0", "q4_0", "nf4", "mlx-4bit")
#: Where a scheme cannot hold a tensor: kept in float16, or left unquantized.
Fallback = Literal["f16", "unquantized"]

#: GGUF's block length for Q8_0 and Q4_0.
GGUF_BLOCK = 32
#: bitsandbytes' default 4-bit block size, and the block size of its double quantization.
NF4_BLOCK = 64
NF4_ABSMAX_BLOCK = 256
#: MLX's default group size for affine quantization.
MLX_GROUP = 64
#: Entries of bitsandbytes' CPU lookup table for 8-bit rounding.
LUT_SIZE = 65536

#: bitsandbytes' NF4 levels (``get_4bit_type("nf4")``), ascending.
NF4_CODE = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)


@dataclass(frozen=True, kw_only=True)
class Quantized:
    """``D(Q(X))`` and the step each entry was rounded to (both float32, ``X``'s shape).

    ``step`` is ``None`` when it was not asked for. ``fallback`` names the format the tensor
    was kept in when the scheme cannot hold it (``"f16"``), ``None`` otherwise.
    """

    values: Float32Array
    step: Float32Array | None = None
    fallback: Fallback | None = None


def row_local(scheme: Scheme) -> bool:
    """Whether the scheme quantizes each row on its own (so rows may be processed in chunks)."""
    return scheme != "nf4"


def quantize(x: npt.NDArray[np.floating], scheme: Scheme, *, with_step: bool = True) -> Quantized:
    """``D(Q(x))`` of a 2-D tensor under ``scheme``, bit for bit as its implementation.

    Parameters
    ----------
    x : ndarray of shape (rows, cols)
        The tensor in its stored layout (rows are contiguous); cast to float32 first, as the
        quantizers do.
    scheme
        One of :data:`SCHEMES`.
    with_step
        Also give each entry's quantization step (skipped otherwise: it costs a pass).

    Returns
    -------
    Quantized
    """
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if scheme == "nf4":
        return _nf4(x32, with_step=with_step)
    if scheme == "mlx-4bit":
        return _mlx_affine(x32, with_step=with_step)
    if x32.shape[-1] % GGUF_BLOCK:
        return _f16(x32)
    blocks = x32.reshape(-1, GGUF_BLOCK)
    values, d = _q8_0(blocks) if scheme == "q8_0" else _q4_0(blocks)
    step = np.broadcast_to(d, blocks.shape).reshape(x32.shape) if with_step else None
    return Quantized(values=values.reshape(x32.shape), step=step)


def _roundf(n: Float32Array) -> Float32Array:
    """C's ``roundf`` (half away from zero), as ``gguf.quants.np_roundf`` writes it."""
    a = np.abs(n)
    floored = np.floor(a)
    b = floored + np.floor(2 * (a - floored))
    return np.sign(n) * b  # type: ignore[no-any-return]


def _q8_0(blocks: Float32Array) -> tuple[Float32Array, Float32Array]:
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = _roundf(blocks * inv).astype(np.int8).astype(np.float32)
    d16 = d.astype(np.float16).astype(np.float32)
    return q * d16, np.abs(d16)


def _q4_0(blocks: Float32Array) -> tuple[Float32Array, Float32Array]:
    imax = np.abs(blocks).argmax(axis=-1)[:, None]
    d = np.take_along_axis(blocks, imax, axis=-1) / np.float32(-8)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = np.trunc(blocks * inv + np.float32(8.5)).astype(np.uint8).clip(0, 15)
    d16 = d.astype(np.float16).astype(np.float32)
    levels = q.astype(np.int8) - np.int8(8)
    return d16 * levels.astype(np.float32), np.abs(d16)


def _mlx_affine(x: Float32Array, *, with_step: bool, bits: int = 4) -> Quantized:
    if x.shape[-1] % MLX_GROUP:
        step = np.zeros_like(x) if with_step else None
        return Quantized(values=x.copy(), step=step, fallback="unquantized")
    g = x.reshape(-1, MLX_GROUP)
    n_bins = np.float32((1 << bits) - 1)
    w_min = g.min(axis=1, keepdims=True)
    w_max = g.max(axis=1, keepdims=True)
    side = np.abs(w_min) > np.abs(w_max)
    scale = np.maximum((w_max - w_min) / n_bins, np.float32(1e-7)).astype(np.float32)
    scale = np.where(side, scale, -scale).astype(np.float32)
    edge = np.where(side, w_min, w_max)
    q0 = np.round(edge / scale)
    at_zero = q0 == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(at_zero, scale, edge / q0).astype(np.float32)
    bias = np.where(at_zero, np.float32(0), edge).astype(np.float32)
    q = np.clip(np.round((g - bias) / scale), 0, n_bins)
    values = (scale * q + bias).astype(np.float32).reshape(x.shape)
    step = np.broadcast_to(np.abs(scale), g.shape).reshape(x.shape) if with_step else None
    return Quantized(values=values, step=step)


def _f16(x: Float32Array) -> Quantized:
    h = x.astype(np.float16)
    step = np.spacing(np.abs(h)).astype(np.float32)
    return Quantized(values=h.astype(np.float32), step=step, fallback="f16")


@functools.cache
def _dynamic_code() -> torch.Tensor:
    """bitsandbytes' ``create_dynamic_map()`` (signed, 8 bits): its double-quantization code."""
    import torch

    data: list[float] = []
    for i in range(7):
        bounds = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0.0, 1.0]
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


@functools.cache
def _dynamic_lut() -> torch.Tensor:
    """The 65536-entry table bitsandbytes' CPU kernel rounds through: for each of the grid
    points ``−1 + 2i/65535`` of [−1, 1], the first code level whose upper midpoint is not
    below it."""
    import torch

    code = _dynamic_code()
    mid = 0.5 * (code[:-1] + code[1:])
    i = torch.arange(LUT_SIZE, dtype=torch.float32)
    grid = -1.0 + (2.0 * i) / (LUT_SIZE - 1)
    return torch.searchsorted(mid, grid, side="left")


def _nf4(x: Float32Array, *, with_step: bool) -> Quantized:
    import torch

    flat = torch.from_numpy(x.reshape(-1))
    code = torch.tensor(NF4_CODE, dtype=torch.float32)
    absmax, scaled = _block_scale(flat, NF4_BLOCK)
    bounds = (code[:-1] + code[1:]) / 2
    q = torch.bucketize(scaled, bounds, out_int32=True)
    del scaled
    scale = _double_quantized(absmax)
    values = _per_block(code[q], scale)
    step = None
    if with_step:
        edges = torch.cat([code[:1], bounds, code[-1:]])
        step = _per_block(edges[q + 1] - edges[q], scale).numpy().reshape(x.shape)
    return Quantized(values=values.numpy().reshape(x.shape), step=step)


def _per_block(levels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``levels · scale`` of each entry's block (blocks of 64 along the flat tensor)."""
    import torch

    n = levels.numel()
    full = n - n % NF4_BLOCK
    head = levels[:full].view(-1, NF4_BLOCK).mul_(scale[: full // NF4_BLOCK].view(-1, 1))
    if full == n:
        return head.view(-1)
    return torch.cat([head.view(-1), levels[full:] * scale[-1]])


def _block_scale(flat: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' per-block absmax and ``clamp(x·(1/absmax), −1, 1)`` (its default op)."""
    import torch

    n = flat.numel()
    rem = n % block
    full = n - rem
    com = flat[:full].reshape(-1, block)
    absmax = com.abs().max(dim=-1)[0]
    scaled = torch.clamp(com * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        am = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / am, -1, 1)])
    return absmax, scaled


def _double_quantized(absmax: torch.Tensor) -> torch.Tensor:
    """The absmax values after bitsandbytes' double quantization and its dequantization."""
    import torch

    offset = absmax.mean()
    centred = absmax - offset
    n = centred.numel()
    pad = (-n) % NF4_ABSMAX_BLOCK
    blocks = torch.cat([centred, centred.new_zeros(pad)]).reshape(-1, NF4_ABSMAX_BLOCK)
    absmax2 = blocks.abs().max(dim=-1)[0]
    inv = torch.where(absmax2 == 0, 0.0, 1.0 / absmax2)
    normed = torch.clamp(blocks * inv.view(-1, 1), -1.0, 1.0)
    index = ((normed + 1.0) * 0.5 * (LUT_SIZE - 1) + 0.5).to(torch.int32)
    q = _dynamic_lut()[index.reshape(-1)[:n]]
    scale = absmax2.repeat_interleave(NF4_ABSMAX_BLOCK)[:n]
    return _dynamic_code()[q] * scale + offset
