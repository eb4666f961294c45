"""Stored factors for PEFT outputs that servers read alike: a kept layer as it is stored, and
any layer zero-padded to one rank (``--uniform-rank``).

Padding ``B`` with zero columns and ``A`` with zero rows leaves ``B·A`` bit for bit unchanged
(a zero is all-zero bytes in every float dtype), so a padded layer is exact; at one rank, every
server's scale rule (PEFT's ``alpha/r_ℓ``, vLLM's ``lora_alpha/r``, llama.cpp's
``alpha / rank of the tensor``) gives the same number. No arithmetic is done here: bytes only.
"""

from __future__ import annotations

from lora_audit.adapter import Adapter, LoraLayer, Structure
from lora_audit.formats.safetensors_io import (
    DTYPE_SIZES,
    SafetensorsSource,
    StoredTensor,
    stored_from_numpy,
)
from lora_audit.formats.writer import NewLayer


def stored_layer(adapter: Adapter, layer: LoraLayer) -> NewLayer:
    """A plain LoRA layer's factors as stored (same bytes, same dtypes), as a :class:`NewLayer`
    with ``b`` of shape (out, r) and ``a`` of shape (r, in).

    Raises
    ------
    ValueError
        For a LoHa/LoKr/Tucker layer, which has no stored ``B`` and ``A``.
    """
    if layer.structure is not Structure.LORA:
        raise ValueError(f"{layer.name}: a {layer.structure} layer has no stored B and A")
    source = adapter.source
    assert source is not None

    def raw(key: str) -> StoredTensor:
        if isinstance(source, SafetensorsSource):
            return source.raw(key)
        return stored_from_numpy(source.get(key))

    return NewLayer(
        b=raw(layer.b_key).reshape(layer.out_features, layer.rank),
        a=raw(layer.a_key).reshape(layer.rank, layer.in_features),
    )


def padded(new: NewLayer, rank: int) -> NewLayer:
    """``new`` with ``B`` padded by zero columns and ``A`` by zero rows to ``rank``.

    Raises
    ------
    ValueError
        When ``rank`` is below the layer's rank.
    """
    import numpy as np

    k = new.rank
    if rank < k:
        raise ValueError(f"cannot pad rank {k} down to {rank}")
    if rank == k:
        return new
    out, inp = new.b.shape[0], new.a.shape[1]
    b_size, a_size = DTYPE_SIZES[new.b.dtype], DTYPE_SIZES[new.a.dtype]
    b = np.zeros((out, rank * b_size), dtype=np.uint8)
    b[:, : k * b_size] = np.frombuffer(memoryview(new.b.data).cast("B"), np.uint8).reshape(
        out, k * b_size
    )
    a = np.zeros((rank, inp * a_size), dtype=np.uint8)
    a[:k] = np.frombuffer(memoryview(new.a.data).cast("B"), np.uint8).reshape(k, inp * a_size)
    return NewLayer(
        b=StoredTensor(dtype=new.b.dtype, shape=(out, rank), data=b.reshape(-1)),
        a=StoredTensor(dtype=new.a.dtype, shape=(rank, inp), data=a.reshape(-1)),
        extra=new.extra,
    )
