"""A fully fine-tuned model and its base, tensor by tensor (``inspect --base``, ``extract``).

Both checkpoints are read the way :mod:`lora_audit.formats.base_model` reads a base: a
``.safetensors`` file, a model directory, a sharded ``*.safetensors.index.json``, or a Hugging
Face cache repository directory (``models--org--name``, its ``main`` snapshot). Only headers are
read up front; each tensor is memory-mapped and read when its layer is audited.

A checkpoint is a *full model*, not an adapter, when it is no PEFT directory
(no ``adapter_config.json``) and none of its keys is an adapter key (any ``lora``, ``hada_w1``,
``lokr_w1``, ``.alpha``, ``dora_scale``, …): :func:`is_full_model`.

Matching
--------
A tuned key is looked up in the base as is, then with its leading segments dropped one at a
time (``bert.encoder.…`` → ``encoder.…``, keeping two), then as the unique base key ending in
``.<key>``. Every tensor is sorted into one :data:`TensorKind`:

* ``linear`` — a 2-D weight (``ΔW`` as stored, ``(out, in)``), ``conv`` — a kernel of 3 or more
  dimensions, flattened to ``(out, in·kh·kw)``; both get a spectrum;
* ``embedding`` — a 2-D weight of an embedding table (its module name says ``embed``, ``wte``,
  ``wpe`` or ``shared``): listed with its exact norms, never given a spectrum;
* ``vector`` — biases and norm weights (1-D), ``other`` — anything else (scalars, buffers);
* tensors only in one checkpoint, with different shapes or of a non-float dtype are listed
  with the reason (:class:`FullPairing`), never dropped silently.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lora_audit.errors import InputError
from lora_audit.formats.base_model import BaseModel, BaseWeight, open_base
from lora_audit.formats.hf_cache import is_repo_dir, snapshot_of
from lora_audit.formats.safetensors_io import FLOAT_DTYPES

if TYPE_CHECKING:
    import numpy.typing as npt

TensorKind = Literal["linear", "conv", "embedding", "vector", "other"]
#: Key fragments that only adapters have: any ``lora`` (PEFT ``lora_A``, kohya ``lora_down``,
#: mlx ``lora_a``, diffusers ``lora.down``/``lora_linear_layer``, XLabs ``qkv_lora1``), LyCORIS
#: ``hada_w1``/``lokr_w1``, ``.alpha``, ``dora_scale``, OFT.
ADAPTER_KEY = re.compile(r"(?i)(lora|hada_w[12]|lokr_w[12]|\.alpha$|dora_scale|(^|\.)b?oft_)")
#: Module names of embedding tables.
EMBEDDING = re.compile(r"(embed|(^|\.)wte$|(^|\.)wpe$|(^|\.)shared$)")


@dataclass(frozen=True, kw_only=True)
class TensorPair:
    """One tensor present in both checkpoints.

    Attributes
    ----------
    key
        Its key in the tuned checkpoint.
    base_key
        Its key in the base.
    module
        The base key less its last segment (``encoder.layer.0.attention.self.query``).
    kind
        :data:`TensorKind`.
    shape
        Stored shape (the same in both).
    dtype, base_dtype
        Stored dtypes (``BF16``, ``F32``, …).
    """

    key: str
    base_key: str
    module: str
    kind: TensorKind
    shape: tuple[int, ...]
    dtype: str
    base_dtype: str

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """``(out, in)``: a kernel flattened after its first dimension, a vector as a column."""
        if not self.shape:
            return 1, 1
        return self.shape[0], math.prod(self.shape[1:])


@dataclass(frozen=True, kw_only=True)
class FullPairing:
    """A tuned checkpoint matched against its base (module docstring).

    Attributes
    ----------
    pairs
        Tensors in both, in the tuned checkpoint's order.
    only_tuned, only_base
        Keys present on one side only.
    mismatched
        ``(tuned key, reason)``: different shapes, or a non-float dtype.
    """

    pairs: tuple[TensorPair, ...]
    only_tuned: tuple[str, ...]
    only_base: tuple[str, ...]
    mismatched: tuple[tuple[str, str], ...]


def resolve(path: Path) -> Path:
    """A Hugging Face cache repository directory as its ``main`` snapshot; else ``path``."""
    return snapshot_of(path) if path.is_dir() and is_repo_dir(path) else path


def is_full_model(path: Path) -> bool:
    """Whether ``path`` is a full model's checkpoint rather than an adapter (module docstring).

    ``False`` as well when nothing readable is there: the adapter reader then says why.
    """
    path = resolve(path)
    if path.is_dir() and (path / "adapter_config.json").exists():
        return False
    try:
        model = open_base(path, role="TUNED")
    except InputError:
        return False
    return not any(ADAPTER_KEY.search(key) for key in model.keys)


def open_pair(base: Path, tuned: Path) -> tuple[BaseModel, BaseModel, FullPairing]:
    """Open both checkpoints (headers only) and match their tensors.

    Raises
    ------
    InputError
        When either cannot be read, ``TUNED`` is an adapter, or no tensor matches.
    """
    base_model = open_base(resolve(base), role="--base")
    tuned_model = open_base(resolve(tuned), role="TUNED")
    adapter_keys = [k for k in tuned_model.keys if ADAPTER_KEY.search(k)]
    if adapter_keys:
        raise InputError(
            f"TUNED {tuned}: this is an adapter ({adapter_keys[0]!r}), not a full model",
            hint="audit an adapter with lora-audit inspect ADAPTER [--base BASE]",
        )
    pairing = pair(base_model, tuned_model)
    if not pairing.pairs:
        example = next(iter(base_model.keys), "")
        raise InputError(
            f"TUNED {tuned}: none of its {len(tuned_model.keys)} tensors is in --base {base} "
            f"(base keys look like {example!r})",
            hint="pass the model TUNED was fine-tuned from as --base",
        )
    return base_model, tuned_model, pairing


def pair(base: BaseModel, tuned: BaseModel) -> FullPairing:
    """Match every tuned tensor to its base tensor (module docstring)."""
    base_keys = set(base.keys)
    by_tail: dict[str, list[str]] = {}
    for key in base.keys:
        by_tail.setdefault(".".join(key.split(".")[-2:]), []).append(key)
    pairs: list[TensorPair] = []
    only_tuned: list[str] = []
    mismatched: list[tuple[str, str]] = []
    taken: set[str] = set()
    for key in tuned.keys:
        base_key = _lookup(key, base_keys, by_tail)
        if base_key is None or base_key in taken:
            only_tuned.append(key)
            continue
        taken.add(base_key)
        _, shape, dtype = tuned.locate(key)
        _, base_shape, base_dtype = base.locate(base_key)
        if shape != base_shape:
            mismatched.append((key, f"shape {list(shape)} here, {list(base_shape)} in the base"))
        elif dtype not in FLOAT_DTYPES or base_dtype not in FLOAT_DTYPES:
            mismatched.append((key, f"{dtype} / {base_dtype}: not a float tensor"))
        else:
            module = base_key.rsplit(".", 1)[0] if "." in base_key else base_key
            pairs.append(
                TensorPair(
                    key=key,
                    base_key=base_key,
                    module=module,
                    kind=_kind(base_key, module, shape),
                    shape=shape,
                    dtype=dtype,
                    base_dtype=base_dtype,
                )
            )
    only_base = tuple(k for k in base.keys if k not in taken)
    return FullPairing(
        pairs=tuple(pairs),
        only_tuned=tuple(only_tuned),
        only_base=only_base,
        mismatched=tuple(mismatched),
    )


def _lookup(key: str, base_keys: set[str], by_tail: dict[str, list[str]]) -> str | None:
    parts = key.split(".")
    for drop in range(max(1, len(parts) - 1)):
        candidate = ".".join(parts[drop:])
        if candidate in base_keys:
            return candidate
    hits = [k for k in by_tail.get(".".join(parts[-2:]), []) if k.endswith("." + key)]
    return hits[0] if len(hits) == 1 else None


def _kind(key: str, module: str, shape: tuple[int, ...]) -> TensorKind:
    if len(shape) == 1:
        return "vector"
    if len(shape) < 2 or not key.endswith("weight") or 0 in shape:
        return "other"
    if EMBEDDING.search(module):
        return "embedding"
    return "linear" if len(shape) == 2 else "conv"


def load(model: BaseModel, key: str) -> npt.NDArray[Any]:
    """One tensor as stored (BF16 widened exactly to float32), memory-mapped then copied."""
    file, shape, dtype = model.locate(key)
    weight = BaseWeight(
        layer=key, key=key, file=file, stored_shape=shape, dtype=dtype, transpose=False
    )
    out = shape[0] if shape else 1
    inner = math.prod(shape[1:]) if len(shape) > 1 else 1
    return model.load(weight, out_features=out, in_features=inner).reshape(shape)
