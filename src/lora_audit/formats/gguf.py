"""llama.cpp GGUF LoRA adapters (``convert_lora_to_gguf.py``; used by llama.cpp and Ollama).

Read with the ``gguf`` package (``pip install gguf``, or the ``lora-rank-audit[gguf]`` extra;
imported only here and only when a GGUF file is given), the way llama.cpp's
``llama_adapter_lora_init`` and ``build_lora_mm`` apply the file:

* metadata ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``
  (float32; missing means 0);
* tensors ``<base tensor>.lora_a`` / ``.lora_b`` in llama.cpp's naming
  (``blk.0.attn_q.weight.lora_a``). In numpy order ``lora_a`` is (r, in) and ``lora_b``
  (out, r) — PEFT's ``lora_A``/``lora_B`` — and ``ΔW = scale · lora_b · lora_a``;
* MoE expert tensors (``ffn_gate_exps`` …) stack the experts: (E, r, in) and (E, out, r);
  expert ``e`` is reported as the layer ``<name>[e]``;
* ``token_embd.weight``: ``lora_a`` is (vocab, r) and ``lora_b`` (dims, r);
  ``ΔE = scale · lora_a · lora_bᵀ`` — the embedding convention with ``B = lora_b`` and
  ``A = lora_aᵀ``;
* ``scale = alpha / r`` with ``r = lora_b.ne[0]`` when ``alpha ≠ 0``, else 1 (both times
  llama.cpp's ``--lora-scaled`` factor, which is not in the file);
* ``*_norm.weight`` tensors are ignored, as llama.cpp ignores them.

F32, F16 and every type the ``gguf`` package dequantises (BF16, Q8_0, Q4_0, K-quants, …) are
read; quantised and BF16 tensors are decoded to float32 exactly as stored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_audit.adapter import Adapter, LayerKind, LoraLayer, ScaleSource, natural_key
from lora_audit.choices import AdapterFormat
from lora_audit.errors import InputError
from lora_audit.formats.stacked import sliced, split_sliced

if TYPE_CHECKING:
    import numpy.typing as npt

_EMBEDDING = "token_embd.weight"
_INTEGER_TYPES = frozenset({"I8", "I16", "I32", "I64"})


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise InputError(
            "this is a GGUF file; reading it needs the gguf package",
            hint="pip install gguf (or the lora-rank-audit[gguf] extra)",
        ) from exc
    return gguf


class GgufSource:
    """The factors of a GGUF adapter as numpy arrays, ``B (out, r)`` / ``A (r, in)``.

    ``get(key)`` decodes tensor ``key`` (F16/F32 as stored, other types dequantised to
    float32); ``"<key>[e]"`` is slice ``e`` of a stacked expert tensor; the ``lora_a`` of
    ``token_embd.weight`` comes back transposed, (r, vocab).
    """

    def __init__(self, path: Path, tensors: dict[str, Any]) -> None:
        self.path = path
        self._tensors = tensors
        #: Names of the tensors decoded so far (:mod:`~lora_audit.formats.accounted`).
        self.materialised: set[str] = set()

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """Every tensor name of the file."""
        return tuple(self._tensors)

    def get(self, key: str) -> npt.NDArray[Any]:
        """Tensor ``key`` decoded as described above."""
        import numpy as np

        gguf = _import_gguf()
        name, index = split_sliced(key)
        tensor = self._tensors[name]
        self.materialised.add(name)
        try:
            if tensor.tensor_type.name in {"F16", "F32", "F64"}:  # numpy arrays as stored
                array: npt.NDArray[Any] = np.asarray(tensor.data)
            else:
                array = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type))
        except (NotImplementedError, ValueError) as exc:
            raise InputError(
                f"{self.path}: tensor {name!r} of type {tensor.tensor_type.name} cannot be "
                f"decoded ({exc})",
                hint="convert the adapter again with --outtype f16, bf16 or q8_0",
            ) from exc
        if index is not None:
            part: npt.NDArray[Any] = array[index]
            return part
        if name == f"{_EMBEDDING}.lora_a":
            return array.T
        return array


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _open(tensor_file: Path) -> Any:
    gguf = _import_gguf()
    try:
        reader = gguf.GGUFReader(tensor_file)
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise InputError(
            f"{tensor_file}: a GGUF file that cannot be read ({exc})",
            hint="the file is truncated or corrupt; convert or download it again",
        ) from exc
    if reader.byte_order != "I":
        raise InputError(
            f"{tensor_file}: a big-endian GGUF file",
            hint="convert the adapter again without --bigendian",
        )
    return reader


def read_gguf(*, path: Path, tensor_file: Path, alpha: float | None) -> Adapter:
    """Read a llama.cpp GGUF LoRA adapter.

    Parameters
    ----------
    alpha
        ``--alpha``: used only when the file has no ``adapter.lora.alpha``.

    Raises
    ------
    InputError
        Without the ``gguf`` package; for a GGUF model or another adapter type; for tensors
        llama.cpp would refuse (unpaired, unexpected suffix, misfitting shapes).
    """
    reader = _open(tensor_file)
    general_type = _field(reader, "general.type")
    arch = _field(reader, "general.architecture")
    if general_type != "adapter":
        raise InputError(
            f"{tensor_file}: a GGUF {general_type or 'model'} file (architecture {arch!r}), "
            "not a LoRA adapter",
            hint="pass a GGUF LoRA adapter (general.type = adapter) or the PEFT adapter it "
            "was converted from",
        )
    adapter_type = _field(reader, "adapter.type")
    if adapter_type != "lora":
        raise InputError(
            f"{tensor_file}: a GGUF adapter of type {adapter_type!r}, not a LoRA",
            hint="lora-audit reads GGUF LoRA adapters (adapter.type = lora)",
        )
    file_alpha = _field(reader, "adapter.lora.alpha")
    tensors = {t.name: t for t in reader.tensors}
    pairs: dict[str, dict[str, Any]] = {}
    passthrough = []
    for name, tensor in tensors.items():
        if name.endswith((".lora_a", ".lora_b")):
            pairs.setdefault(name[: -len(".lora_a")], {})[name[-1]] = tensor
        elif name.endswith("_norm.weight"):
            passthrough.append(name)
        else:
            raise InputError(
                f"{tensor_file}: GGUF LoRA tensor {name!r} has an unexpected suffix",
                hint="llama.cpp refuses it too; convert the adapter again",
            )
    scale_alpha, source, warnings = _alpha(file_alpha, alpha, tensor_file=tensor_file)
    layers: list[LoraLayer] = []
    for base, pair in pairs.items():
        if len(pair) != 2:
            raise InputError(
                f"{tensor_file}: LoRA tensor pair for {base!r} is missing one component",
                hint="the file is incomplete; convert the adapter again",
            )
        layers += _layers(
            base, pair["a"], pair["b"], alpha=scale_alpha, source=source, tensor_file=tensor_file
        )
    if not layers:
        raise InputError(f"{tensor_file}: a GGUF LoRA adapter with no lora_a/lora_b tensors")
    layers.sort(key=lambda layer: natural_key(layer.name))
    metadata = {
        key: str(value)
        for key in ("general.architecture", "general.name", "adapter.type", "adapter.lora.alpha")
        if (value := _field(reader, key)) is not None
    }
    return Adapter(
        path=path,
        tensor_file=tensor_file,
        format=AdapterFormat.GGUF,
        layers=tuple(layers),
        passthrough_keys=tuple(passthrough),
        config={},
        metadata=metadata,
        base_model=_field(reader, "general.base_model.0.name"),
        warnings=tuple(warnings),
        source=GgufSource(tensor_file, tensors),
    )


def _alpha(
    file_alpha: Any, option: float | None, *, tensor_file: Path
) -> tuple[float | None, ScaleSource, list[str]]:
    """``(alpha, where it came from, warnings)``; alpha ``None`` means scale 1 (llama.cpp)."""
    if isinstance(file_alpha, int | float) and file_alpha != 0:
        if not math.isfinite(file_alpha):
            raise InputError(f"{tensor_file}: adapter.lora.alpha is {file_alpha}")
        return float(file_alpha), "metadata", []
    if option is not None:
        return option, "option", []
    said = "is 0" if file_alpha is not None else "is missing"
    return (
        None,
        "assumed",
        [
            f"{tensor_file}: adapter.lora.alpha {said}; llama.cpp then applies scale 1 (times "
            "--lora-scaled), which is assumed here (pass --alpha to set alpha instead)"
        ],
    )


def _layers(
    base: str,
    a: Any,
    b: Any,
    *,
    alpha: float | None,
    source: ScaleSource,
    tensor_file: Path,
) -> list[LoraLayer]:
    """One layer, or one per expert of stacked (E, …) factors, as llama.cpp checks them."""
    a_shape = tuple(int(d) for d in reversed(a.shape.tolist()))  # numpy order
    b_shape = tuple(int(d) for d in reversed(b.shape.tolist()))
    for t, shape in ((a, a_shape), (b, b_shape)):
        if t.tensor_type.name in _INTEGER_TYPES or 0 in shape:
            raise InputError(
                f"{tensor_file}: tensor {t.name!r} is {t.tensor_type.name} {list(shape)}"
            )
    embedding = base.endswith(_EMBEDDING)
    misfit = InputError(
        f"{tensor_file}: {base}: lora_a {list(a_shape)} and lora_b {list(b_shape)} do not fit",
        hint="llama.cpp expects lora_a (r, in) and lora_b (out, r) in numpy order",
    )
    if len(a_shape) != len(b_shape) or len(a_shape) not in (2, 3):
        raise misfit
    rank = b_shape[-1]
    if embedding and len(a_shape) == 2 and a_shape[1] == rank:
        out, inp = b_shape[0], a_shape[0]
    elif not embedding and a_shape[-2] == rank and a_shape[:-2] == b_shape[:-2]:
        out, inp = b_shape[-2], a_shape[-1]
    else:
        raise misfit
    experts: list[int | None] = [None] if len(a_shape) == 2 else list(range(a_shape[0]))
    name = base.removesuffix(".weight")
    dtype = a.tensor_type.name
    if b.tensor_type.name != dtype:
        dtype = f"{b.tensor_type.name}/{dtype}"
    return [
        LoraLayer(
            name=name if e is None else sliced(name, e),
            kind=LayerKind.EMBEDDING if embedding else LayerKind.LINEAR,
            a_key=a.name if e is None else sliced(a.name, e),
            b_key=b.name if e is None else sliced(b.name, e),
            a_shape=(rank, inp),
            b_shape=(out, rank),
            out_features=out,
            in_features=inp,
            rank=rank,
            alpha=alpha,
            scale=1.0 if alpha is None else alpha / rank,
            dtype=dtype,
            weight_shape=(inp, out) if embedding else (out, inp),
            scale_source=source,
        )
        for e in experts
    ]
