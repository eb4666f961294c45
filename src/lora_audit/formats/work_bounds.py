"""Refuse, before anything is allocated, layers whose audit would need unbounded memory.

A small crafted file can describe a huge computation: a LoKr layer whose Kronecker factors
imply a 6 GB thin factor, a Tucker core with a 10⁴×10⁴ kernel, a LoHa layer of inner
dimension r₁·r₂ = 10⁸, a 160 kB layer with r = 20,000 (its r×r Gram matrices). The work of
auditing a layer is known from its shapes alone:

* the thin factors ``B (out, r)`` and ``A (r, in)`` in float64: ``8·r·(out + in)`` bytes;
* the r×r Gram matrices, core and its SVD: about ``4 · 8·r²`` bytes;
* for a full Kronecker layer (``KRON``), the dense ``W1``, ``W2`` and their SVDs as well.

:func:`check_work_bounded` refuses any layer whose estimate exceeds
``max(MIN_BUDGET_BYTES, FILE_FACTOR × file size)``: a real adapter needs at most a few
times its own size per layer (float64 copies of its stored factors), so only a file whose
shapes promise far more work than its bytes hold is refused. It also checks that the
inner dimensions of LoKr and LoHa factors fit, so that a mismatch is a one-line error
instead of a failure inside a matrix product.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from lora_audit.adapter import Adapter, LoraLayer, Structure
from lora_audit.errors import InputError
from lora_audit.formats.safetensors_io import Header

#: Working memory every layer may use, whatever the file's size.
MIN_BUDGET_BYTES = 1 << 30
#: … or this many times the file's size, when that is more.
FILE_FACTOR = 8
_GRAM_COPIES = 4


def work_budget(file_size: int) -> int:
    """Bytes of float64 working memory one layer of a ``file_size``-byte file may use."""
    return max(MIN_BUDGET_BYTES, FILE_FACTOR * file_size)


def layer_work_bytes(layer: LoraLayer, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Estimated float64 bytes that auditing ``layer`` allocates (thin factors + Grams).

    Parameters
    ----------
    layer
        The layer as read.
    shapes
        Stored shape of each of the layer's tensors, by role (``layer.keys``), for the
        dense Kronecker factors of a ``KRON`` layer.
    """
    r, out, inp = layer.rank, layer.out_features, layer.in_features
    work = 8 * r * (out + inp) + _GRAM_COPIES * 8 * r * r
    if layer.structure is Structure.KRON:
        w1 = _dense_size(shapes, "w1")
        w2 = _dense_size(shapes, "w2")
        work += 3 * 8 * (w1 + w2)
    return work


def _dense_size(shapes: Mapping[str, tuple[int, ...]], which: str) -> int:
    if which in shapes:
        full = shapes[which]
        return full[0] * math.prod(full[1:])
    a, b = shapes.get(f"{which}_a", (0,)), shapes.get(f"{which}_b", (0,))
    core = shapes.get(which.replace("w", "t"))  # t2 (i, j, kh, kw): W2 is (a[1], b[1]·kh·kw)
    if core is not None:
        return a[-1] * b[-1] * math.prod(core[2:])
    return a[0] * math.prod(b[1:])


def check_work_bounded(adapter: Adapter, *, header: Header, file_size: int) -> None:
    """Refuse the first layer whose audit needs more than :func:`work_budget` bytes.

    Raises
    ------
    InputError
        Naming the layer, its estimated working memory and the limit; or a LoKr/LoHa layer
        whose factors' inner dimensions do not fit.
    """
    budget = work_budget(file_size)
    for layer in adapter.layers:
        shapes = {
            role: header.tensors[key].shape
            for role, key in layer.keys.items()
            if key in header.tensors  # an expert of a stacked tensor is bounded by its layer
        }
        _check_inner_dims(layer, shapes, where=str(adapter.tensor_file))
        need = layer_work_bytes(layer, shapes)
        if need > budget:
            raise InputError(
                f"{adapter.tensor_file}: layer {layer.name!r} ({layer.structure.value}, "
                f"{layer.out_features}×{layer.in_features}, inner rank {layer.rank}) needs "
                f"about {_size(need)} of working memory to audit, over the {_size(budget)} "
                f"allowed for a {_size(file_size)} file",
                hint="it is too large to audit in bounded memory; a real adapter's shapes "
                "need a few times the file's size, so the file is probably crafted or corrupt",
            )


def _check_inner_dims(
    layer: LoraLayer, shapes: Mapping[str, tuple[int, ...]], *, where: str
) -> None:
    pairs: list[tuple[str, str, int, int]] = []
    if layer.structure in (Structure.LOKR, Structure.KRON):
        for left, right in (("w1_a", "w1_b"), ("w2_a", "w2_b")):
            if left in shapes and right in shapes and "t2" not in shapes:
                pairs.append((left, right, shapes[left][-1], shapes[right][0]))
        if "t2" in shapes and "w2_a" in shapes and "w2_b" in shapes:
            core = shapes["t2"]
            pairs.append(("t2", "w2_a", core[0], shapes["w2_a"][0]))
            pairs.append(("t2", "w2_b", core[1], shapes["w2_b"][0]))
    if layer.structure is Structure.LOHA and "t1" not in shapes:
        w1b, w2b = shapes.get("w1_b"), shapes.get("w2_b")
        if w1b is not None and w2b is not None:
            pairs.append(("w1_b", "w2_b", math.prod(w1b[1:]), math.prod(w2b[1:])))
    for left, right, m, n in pairs:
        if m != n:
            raise InputError(
                f"{where}: layer {layer.name!r}: {layer.structure.value} factors do not fit: "
                f"{left} {list(shapes[left])} and {right} {list(shapes[right])}",
                hint="the file is corrupt or was not written by LyCORIS",
            )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
