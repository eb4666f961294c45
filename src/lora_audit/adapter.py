"""The in-memory model of an adapter: which layers it adapts and where their factors live.

An :class:`Adapter` holds no tensor data. Each :class:`LoraLayer` names the keys of its two
factors in a :class:`TensorSource`; the spectral engine loads them group by group, so that
no more than one group of equal-shape layers is held in memory at a time.

Conventions
-----------
Every layer is a thin product ``ΔW = scale · B @ A`` with ``B`` of shape ``(out, rank)`` and
``A`` of shape ``(rank, in)`` once the stored tensors are flattened to 2-D:

* Linear (and GPT-2 ``Conv1D``): stored as is.
* Conv: ``A`` of shape ``(rank, in, kh, kw)`` is flattened to ``(rank, in·kh·kw)``;
  ``B`` of shape ``(out, rank, 1, 1)`` to ``(out, rank)``.
* Embedding (PEFT ``lora_embedding_A`` ``(rank, vocab)``, ``lora_embedding_B``
  ``(dim, rank)``): ``ΔW = scale · (B @ A)ᵀ``; singular values are those of ``B @ A``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol, cast, runtime_checkable

import numpy as np
import numpy.typing as npt

from lora_audit.choices import AdapterFormat

Float64Array = npt.NDArray[np.float64]


class LayerKind(StrEnum):
    """What kind of module a LoRA layer adapts."""

    LINEAR = "linear"
    CONV = "conv"
    EMBEDDING = "embedding"


class Structure(StrEnum):
    """How the stored tensors make up ``ΔW``; all but ``KRON`` are thin products ``B·A``.

    ``LORA``
        ``B`` = up / ``lora_B``, ``A`` = down / ``lora_A``.
    ``TUCKER``
        LoCon with a Tucker core ``mid (r, r, kh, kw)``:
        ``A[a, (i,h,w)] = Σ_b mid[a,b,h,w]·down[b,i]``.
    ``LOHA``
        ``ΔW = (w1a·w1b) ⊙ (w2a·w2b)``: a thin product of face-splitting factors of inner
        dimension ``r₁·r₂``: ``B[o,(p,q)] = w1a[o,p]·w2a[o,q]``, ``A[(p,q),i] = w1b[p,i]·w2b[q,i]``.
    ``LOKR``
        ``ΔW = kron(W1, W2)`` with a low-rank ``W2 = w2a·w2b``: ``B = kron(W1, w2a)``,
        ``A = kron(I, w2b)`` of inner dimension ``cols(W1)·r₂``.
    ``KRON``
        ``ΔW = kron(W1, W2)`` with a full ``W2``: its singular values are the products
        ``σᵢ(W1)·σⱼ(W2)``; as factors, ``B = kron(U₁S₁, U₂S₂)``, ``A = kron(V₁ᵀ, V₂ᵀ)`` from the
        SVDs of the two (small) factors.
    """

    LORA = "lora"
    TUCKER = "tucker"
    LOHA = "loha"
    LOKR = "lokr"
    KRON = "kron"


#: Where a layer's scale came from, as the report states it:
#:
#: ``config``        the adapter's own config (``adapter_config.json``, mlx-lm's config)
#: ``metadata``      the safetensors header metadata (PEFT/diffusers ``lora_adapter_metadata``)
#: ``module_alpha``  a per-module ``.alpha`` tensor stored beside the factors (kohya, ComfyUI)
#: ``option``        the user's ``--alpha``
#: ``assumed``       nothing in the file says; scale 1 (or the documented default) was assumed
#: ``fixed``         the format has no scale parameter (it is part of the factors)
ScaleSource = Literal["config", "metadata", "module_alpha", "option", "assumed", "fixed"]


class TensorSource(Protocol):
    """Where tensors are read from (a safetensors file, a GGUF file, or memory in tests)."""

    def get(self, key: str) -> npt.NDArray[Any]:
        """Return the tensor stored under ``key`` as a numpy array of its stored shape.

        F16/F32/F64 and integer tensors keep their dtype; BF16 is widened exactly to float32;
        quantised formats are dequantised to float32.
        """
        ...


class FactorReader(Protocol):
    """A reader that fills caller-owned float64 buffers (one per thread; not thread-safe)."""

    def read_into(self, key: str, out: npt.NDArray[np.float64]) -> None:
        """Decode tensor ``key`` into ``out`` (float64, its element count), reusing scratch."""
        ...

    def close(self) -> None:
        """Release the file handle (the reader reopens it when used again)."""
        ...


@runtime_checkable
class ReadsIntoBuffers(Protocol):
    """A :class:`TensorSource` that can also stream tensors into reused buffers."""

    def open_reader(self) -> FactorReader:
        """A new :class:`FactorReader` over the same tensors (one per worker thread)."""
        ...


@dataclass(frozen=True, kw_only=True)
class LoraLayer:
    """One adapted module: ``ΔW = scale · B @ A``.

    Attributes
    ----------
    name
        The module's path in the base model (``encoder.layer.0.attention.self.query``).
    kind
        Linear, conv or embedding.
    a_key, b_key
        Keys of the factors ``A`` (stored shape ``a_shape``) and ``B`` (``b_shape``).
    out_features, in_features
        Shape of ``B @ A`` as a matrix: ``B`` is ``(out_features, rank)`` and ``A`` is
        ``(rank, in_features)`` after flattening conv kernels.
    rank
        Nominal rank ``r`` (rows of ``A``).
    alpha
        ``lora_alpha`` that applies to this layer after patterns, or ``None`` when unknown.
    scale
        The factor ``s`` in ``ΔW = s·B·A``.
    dtype
        Stored dtype of the factors (``"F32"``, ``"BF16"``, …).
    weight_shape
        Shape of the adapted weight as the base model stores it (``(out, in)``, ``(out, in,
        kh, kw)``, or ``(vocab, dim)`` for an embedding).
    extra_keys
        Other tensors that belong to the module (``lora_B.bias``, DoRA magnitude) and are
        passed through unchanged.
    dora
        Whether the layer is DoRA; its spectrum is still that of ``s·B·A``.
    scale_source
        Where ``scale`` came from (see :data:`ScaleSource`); ``assumed`` must also produce a
        warning that names the scale assumed.
    conv_groups
        ``groups`` of a PEFT LoRA on a grouped convolution (1 otherwise): a dense ``lora_A``
        followed by a grouped ``lora_B``, read with ``B`` as its block-diagonal ``(out, r)``
        matrix, so ``ΔW`` is the dense convolution the layer's ``forward`` adds, which does not
        fit the base weight's ``(out, in/groups, …)`` shape (PEFT cannot merge it either).
    write_refusal
        Why ``compress`` and ``merge`` cannot write this layer back in a layout its loader
        rebuilds exactly; ``None`` when they can.
    """

    name: str
    kind: LayerKind
    a_key: str
    b_key: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    out_features: int
    in_features: int
    rank: int
    alpha: float | None
    scale: float
    dtype: str
    weight_shape: tuple[int, ...]
    extra_keys: tuple[str, ...] = ()
    dora: bool = False
    structure: Structure = Structure.LORA
    keys: Mapping[str, str] = field(default_factory=dict)
    stored_params: int | None = None
    network_dim: int | None = None
    scale_source: ScaleSource = "assumed"
    conv_groups: int = 1
    write_refusal: str | None = None

    @property
    def params(self) -> int:
        """Number of stored parameters: ``rank · (in + out)`` for plain LoRA."""
        if self.stored_params is not None:
            return self.stored_params
        return self.rank * (self.in_features + self.out_features)

    @property
    def params_per_rank(self) -> int:
        """Parameters one unit of rank costs, ``in + out``."""
        return self.in_features + self.out_features

    @property
    def group_key(self) -> tuple[int, int, int]:
        """Layers with equal ``(out, rank, in)`` are batched together."""
        return (self.out_features, self.rank, self.in_features)


@dataclass(frozen=True, kw_only=True)
class Adapter:
    """An adapter read from disk: its layers, pass-through tensors and metadata.

    Attributes
    ----------
    path
        The file or directory the user named.
    tensor_file
        The safetensors file the tensors come from.
    format
        What the adapter was read as (:class:`~lora_audit.choices.AdapterFormat`, a ``str``:
        ``"peft"``).
    layers
        Adapted layers in file order.
    passthrough_keys
        Tensors that are not LoRA factors (``modules_to_save``, biases, DoRA magnitudes).
    config
        The adapter's configuration as read (``adapter_config.json`` for PEFT), unchanged.
    metadata
        The safetensors header metadata (string to string).
    base_model
        Name or path of the base model, if recorded.
    warnings
        Problems that did not stop reading (e.g. scale assumed to be 1).
    source
        Where the tensor data is read from.
    """

    path: Path
    tensor_file: Path
    format: AdapterFormat
    layers: tuple[LoraLayer, ...]
    passthrough_keys: tuple[str, ...] = ()
    modules_to_save: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    base_model: str | None = None
    warnings: tuple[str, ...] = ()
    source: TensorSource | None = field(default=None, compare=False, repr=False)

    def load_factors(self, layer: LoraLayer) -> tuple[Float64Array, Float64Array]:
        """Load ``(B, A)`` of one layer as 2-D float64 arrays, ``B·A = ΔW / scale``.

        Returns
        -------
        b : ndarray of shape (out_features, rank), float64
        a : ndarray of shape (rank, in_features), float64
        """
        if layer.structure is Structure.LORA:
            b, a = self.load_stored(layer)
            return b.astype(np.float64), a.astype(np.float64)
        return thin_factors(layer, self.load_tensors(layer))

    def load_stored(self, layer: LoraLayer) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """``(B, A)`` of a plain LoRA layer as 2-D arrays in their stored precision.

        Returns
        -------
        b : ndarray of shape (out_features, rank)
        a : ndarray of shape (rank, in_features)
            F16/F32/F64 as stored, BF16 widened to float32 (see :class:`TensorSource`).
        """
        if self.source is None:
            raise RuntimeError("adapter has no tensor source")
        if layer.structure is not Structure.LORA:
            raise ValueError(f"{layer.name}: a {layer.structure} layer has no stored B and A")
        a = self.source.get(layer.a_key).reshape(layer.rank, layer.in_features)
        b = self.source.get(layer.b_key).reshape(layer.out_features, layer.rank)
        return b, a

    def load_tensors(self, layer: LoraLayer) -> dict[str, Float64Array]:
        """The stored tensors of a structured layer, by role (``w1``, ``w2``, …), in float64."""
        if self.source is None:
            raise RuntimeError("adapter has no tensor source")
        return {role: self.source.get(key).astype(np.float64) for role, key in layer.keys.items()}


def thin_factors(
    layer: LoraLayer, t: Mapping[str, npt.NDArray[Any]]
) -> tuple[Float64Array, Float64Array]:
    """``(B, A)`` with ``B·A = ΔW/scale`` for the thin structures, in float64.

    Returns
    -------
    b : ndarray of shape (out_features, rank), float64
    a : ndarray of shape (rank, in_features), float64
    """
    out, inp, r = layer.out_features, layer.in_features, layer.rank
    f = {role: np.asarray(v, dtype=np.float64) for role, v in t.items()}
    if layer.structure is Structure.TUCKER:
        mid = f["mid"]
        down = f["down"].reshape(mid.shape[1], -1)
        a = np.einsum("abhw,bi->aihw", mid, down).reshape(mid.shape[0], inp)
        return f["up"].reshape(out, -1), a
    if layer.structure is Structure.LOHA:
        w1a, w1b = _loha_half(f, "1", out=out, inp=inp)
        w2a, w2b = _loha_half(f, "2", out=out, inp=inp)
        b = (w1a[:, :, None] * w2a[:, None, :]).reshape(out, r)
        a = (w1b[:, None, :] * w2b[None, :, :]).reshape(r, inp)
        return b, a
    if layer.structure is Structure.LOKR:
        w1 = kron_w1(f)
        w2a = f["w2_a"]
        w2b = f["w2_b"].reshape(w2a.shape[1], -1)
        eye = np.eye(w1.shape[1], dtype=np.float64)
        return cast("Float64Array", np.kron(w1, w2a)), cast("Float64Array", np.kron(eye, w2b))
    # KRON: kron(U1·S1, U2·S2) · kron(V1ᵀ, V2ᵀ) — exact, of inner dimension rank(W1)·rank(W2)
    u1, s1, v1 = np.linalg.svd(kron_w1(f), full_matrices=False)
    u2, s2, v2 = np.linalg.svd(kron_w2(f), full_matrices=False)
    return np.kron(u1 * s1, u2 * s2), np.kron(v1, v2)


def _loha_half(
    f: Mapping[str, Float64Array], which: str, *, out: int, inp: int
) -> tuple[Float64Array, Float64Array]:
    """``(w_a (out, r), w_b (r, in))`` of one Hadamard factor, Tucker core folded in."""
    wa, wb = f[f"w{which}_a"], f[f"w{which}_b"]
    core = f.get(f"t{which}")
    if core is None:
        return wa.reshape(out, -1), wb.reshape(wa.shape[-1], inp)
    # Tucker: w_a is (r, out), w_b is (r, in); W = Σ_i w_a[i,:]ᵀ ⊗ (Σ_j core[i,j]·w_b[j,:])
    m = np.einsum("ijhw,jc->ichw", core, wb).reshape(core.shape[0], inp)
    return wa.T.reshape(out, -1), m


def kron_w1(f: Mapping[str, Float64Array]) -> Float64Array:
    """LoKr's small factor ``W1`` (2-D), from ``w1`` or ``w1_a·w1_b``."""
    if "w1" in f:
        return f["w1"].reshape(f["w1"].shape[0], -1)
    return f["w1_a"] @ f["w1_b"]


def kron_w2(f: Mapping[str, Float64Array]) -> Float64Array:
    """LoKr's large factor ``W2`` as a matrix (conv kernels flattened into its columns)."""
    if "w2" in f:
        return f["w2"].reshape(f["w2"].shape[0], -1)
    if "t2" in f:
        w: Float64Array = np.einsum("ijhw,jr,ip->prhw", f["t2"], f["w2_b"], f["w2_a"])
        return w.reshape(w.shape[0], -1)
    return f["w2_a"] @ f["w2_b"].reshape(f["w2_a"].shape[1], -1)


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``layers.2`` before ``layers.10``."""
    import re

    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part
    )


def lora_scale(*, alpha: float, rank: int, rslora: bool) -> float:
    """PEFT's scale: ``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank
