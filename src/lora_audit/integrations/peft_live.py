"""An :class:`~lora_audit.adapter.Adapter` read from the LoRA modules of a PEFT model in memory.

Each LoRA module of the model (``peft.tuners.lora.LoraLayer``: Linear, Conv1D, Conv,
Embedding) gives one :class:`~lora_audit.adapter.LoraLayer` exactly as
:mod:`lora_audit.formats.peft` builds it from the saved file: the same name (the module's
path in the base model), shapes, rank (the rows of ``A``), ``lora_alpha`` and scale. The scale
is the module's own ``scaling[adapter]``, the factor its forward pass applies (``alpha/r``,
or ``alpha/√r`` with rsLoRA, after ``rank_pattern``/``alpha_pattern``). The factors stay where
they are: :class:`LiveSource` hands the engine one tensor at a time, detached and copied to
the host in its stored precision (bf16 widened exactly to float32, as the safetensors reader
does), so nothing of the size of ``ΔW`` is formed and no gradient is recorded.

Factors the model does not hold whole are refused by name (:class:`ShardedFactors`): a
DeepSpeed ZeRO-3 placeholder (``numel() == 0`` with ``ds_*`` attributes) and an FSDP2
``DTensor`` (unless ``gather=True``: then each is gathered with ``full_tensor()``, one module
at a time, on every rank). They are never read as zeros, which is how an untrained-looking
adapter would otherwise appear (PEFT #1402).

torch is imported inside the functions only: importing this module stays torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lora_audit.adapter import Adapter, LayerKind, LoraLayer, natural_key
from lora_audit.choices import AdapterFormat
from lora_audit.errors import InputError
from lora_audit.formats.peft_init import init_warnings

#: The path of an adapter that was never saved, in the report and in its compress command.
UNSAVED_PATH = "ADAPTER_DIR"

_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


class ShardedFactors(InputError):
    """The model holds only a shard (or a placeholder) of some LoRA factors."""


class LiveSource:
    """A :class:`~lora_audit.adapter.TensorSource` over tensors of a live model (read only)."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self._tensors = dict(tensors)

    def get(self, key: str) -> npt.NDArray[Any]:
        """A host copy of tensor ``key`` in its stored precision (bf16 widened to float32)."""
        import torch

        with torch.no_grad():
            tensor = self._tensors[key].detach()
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.float()  # exact, as the safetensors reader widens BF16
            host = tensor.cpu().numpy()
        return np.array(host, copy=True)  # never a view of the parameter


def model_root(model: Any) -> Any:
    """The module whose ``named_modules()`` names match the saved keys' module paths.

    ``PeftModel`` → ``model.base_model.model`` (keys ``base_model.model.<path>``);
    ``LoraModel`` → ``model.model``; any other module (a transformers model with
    ``add_adapter``) → itself.
    """
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    if isinstance(model, PeftModel):
        return model.base_model.model
    if isinstance(model, BaseTuner):
        return model.model
    return model


def lora_modules(model: Any) -> Iterator[tuple[str, Any]]:
    """``(path, module)`` of every PEFT LoRA module below the model's root."""
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    for name, module in model_root(model).named_modules():
        if isinstance(module, PeftLoraLayer):
            yield name, module


def choose_adapter(model: Any, adapter_name: str | None) -> str:
    """The adapter to read: ``adapter_name``, else the one active adapter.

    Raises
    ------
    InputError
        No LoRA module, an unknown name, or several active adapters and no name given.
    """
    modules = [module for _, module in lora_modules(model)]
    if not modules:
        raise InputError(
            "the model has no PEFT LoRA modules",
            hint="pass the PeftModel (get_peft_model(...)); LoHa, LoKr, AdaLoRA, IA3 and "
            "other tuners: save_pretrained and use lora_audit.inspect",
        )
    known = sorted({name for m in modules for name in (*m.lora_A, *m.lora_embedding_A)})
    if adapter_name is not None:
        if adapter_name not in known:
            raise InputError(
                f"adapter {adapter_name!r} is not in the model",
                hint=f"its LoRA adapters: {', '.join(known)}",
            )
        return adapter_name
    active = sorted({name for m in modules for name in m.active_adapters if name in known})
    if len(active) != 1:
        raise InputError(
            f"{len(active)} active LoRA adapters ({', '.join(active) or 'none'})",
            hint=f"name the one to audit: adapter_name= one of {', '.join(known)}",
        )
    return str(active[0])


def live_adapter(
    model: Any, adapter_name: str | None = None, *, path: str | None = None, gather: bool = False
) -> Adapter:
    """The adapter ``adapter_name`` (default: the active one) of a PEFT model, in memory.

    Parameters
    ----------
    model
        A ``PeftModel``, a ``LoraModel``, or a module with PEFT LoRA layers injected.
    adapter_name
        The adapter to read; ``None`` reads the active one (refused when several are active).
    path
        What the report calls the adapter (where it is or will be saved); default
        :data:`UNSAVED_PATH`.
    gather
        Gather FSDP2 ``DTensor`` factors (:func:`gathered`), one module at a time, in the
        modules' order. ``DTensor.full_tensor()`` is a collective: call this on every rank of
        the mesh, or none. ZeRO-3 placeholders are still refused.

    Raises
    ------
    InputError
        No LoRA module, an unknown or ambiguous adapter, a LoRA module of a kind that is not
        ``B·A`` (``target_parameters`` wrappers), or :class:`ShardedFactors`.
    """
    name = choose_adapter(model, adapter_name)
    where = f"<in memory: adapter {name!r}>"
    layers: list[LoraLayer] = []
    tensors: dict[str, Any] = {}
    extras_all: list[str] = []
    for module_path, module in lora_modules(model):
        found = _factors(module, name)
        if found is None:
            continue
        kind, a, b = found
        if gather:
            a, b = gathered(a), gathered(b)
        _check_whole(module_path, a, b)
        extras = _extras(module, name, module_path)
        layer = _layer(module_path, module, name, kind=kind, a=a, b=b, extras=tuple(extras))
        tensors[layer.a_key], tensors[layer.b_key] = a, b
        layers.append(layer)
        extras_all += extras
    layers.sort(key=lambda layer: natural_key(layer.name))
    config = _config(model, name)
    return Adapter(
        path=Path(path or UNSAVED_PATH),
        tensor_file=Path(where),
        format=AdapterFormat.PEFT,
        layers=tuple(layers),
        passthrough_keys=tuple(extras_all),
        modules_to_save=tuple(str(m) for m in config.get("modules_to_save") or ()),
        config=config,
        base_model=str(config.get("base_model_name_or_path") or "") or None,
        warnings=tuple(init_warnings(config, where=where)),
        source=LiveSource(tensors),
    )


def _factors(module: Any, name: str) -> tuple[LayerKind, Any, Any] | None:
    """``(kind, A, B)`` of one module's adapter ``name``, ``None`` when it has none."""
    from peft.tuners.lora.layer import MultiheadAttention, ParamWrapper

    unread = {
        ParamWrapper: "LoRA on target_parameters (MoE experts)",
        MultiheadAttention: "LoRA on nn.MultiheadAttention",
    }
    what = next((text for kind, text in unread.items() if isinstance(module, kind)), None)
    if what is None and getattr(module.get_base_layer(), "groups", 1) > 1:
        what = "LoRA on a grouped convolution (block-diagonal lora_B)"
    if what is not None:
        raise InputError(
            f"{what} is not read in memory",
            hint="save_pretrained and use lora_audit.inspect, which reads it exactly",
        )
    if name in module.lora_embedding_A:
        return LayerKind.EMBEDDING, module.lora_embedding_A[name], module.lora_embedding_B[name]
    if name not in module.lora_A:
        return None
    a, b = module.lora_A[name].weight, module.lora_B[name].weight
    return (LayerKind.CONV if a.dim() > 2 else LayerKind.LINEAR), a, b


def gathered(tensor: Any) -> Any:
    """A whole host copy of an FSDP2 ``DTensor`` (``full_tensor()``, a collective); else
    ``tensor`` itself. The gathered tensor leaves the device at once."""
    if type(tensor).__name__ != "DTensor":
        return tensor
    import torch

    with torch.no_grad():
        return tensor.detach().full_tensor().cpu()


def is_sharded(tensor: Any) -> bool:
    """A ZeRO-3 placeholder (``numel() == 0``, ``ds_*`` attributes) or an FSDP2 ``DTensor``."""
    if type(tensor).__name__ == "DTensor":
        return True
    return bool(tensor.numel() == 0)  # ZeRO-3 leaves an empty placeholder outside a gather


def _check_whole(module_path: str, a: Any, b: Any) -> None:
    for tensor in (a, b):
        if not is_sharded(tensor):
            continue
        how = (
            "an FSDP2 DTensor"
            if type(tensor).__name__ == "DTensor"
            else f"a DeepSpeed ZeRO-3 placeholder (numel {tensor.numel()}, full shape "
            f"{list(getattr(tensor, 'ds_shape', ()))})"
        )
        raise ShardedFactors(
            f"{module_path}: the LoRA factors are sharded ({how}); reading them here would "
            "see a part, not the adapter",
            hint="audit the saved checkpoint (lora_audit.inspect); under FSDP2 call "
            "inspect_model(model, gather=True) on every rank; under ZeRO-3 inside "
            "deepspeed.zero.GatheredParameters on every rank",
        )


def _extras(module: Any, name: str, module_path: str) -> list[str]:
    """The keys PEFT saves beside the factors: the DoRA magnitude, the ``lora_B`` bias."""
    extras = []
    if name in module.lora_magnitude_vector:
        extras.append(f"{module_path}.lora_magnitude_vector")
    if name in module.lora_B and getattr(module.lora_B[name], "bias", None) is not None:
        extras.append(f"{module_path}.lora_B.bias")
    return extras


def _layer(
    module_path: str,
    module: Any,
    name: str,
    *,
    kind: LayerKind,
    a: Any,
    b: Any,
    extras: tuple[str, ...],
) -> LoraLayer:
    a_shape, b_shape = tuple(int(d) for d in a.shape), tuple(int(d) for d in b.shape)
    rank = a_shape[0]
    if len(a_shape) < 2 or len(b_shape) < 2 or b_shape[1] != rank:
        raise InputError(
            f"{module_path}: rank mismatch: A has shape {list(a_shape)}, B {list(b_shape)}",
            hint="B must be (out, r) when A is (r, in)",
        )
    out_features, in_features = b_shape[0], math.prod(a_shape[1:])
    weight_shape: tuple[int, ...]
    if kind is LayerKind.EMBEDDING:
        weight_shape = (in_features, out_features)
    elif kind is LayerKind.CONV:
        weight_shape = (out_features, *a_shape[1:])
    else:
        weight_shape = (out_features, in_features)
    dtypes = [_DTYPES.get(str(t.dtype).removeprefix("torch."), str(t.dtype)) for t in (a, b)]
    alpha = module.lora_alpha.get(name)
    return LoraLayer(
        name=module_path,
        kind=kind,
        a_key=f"{module_path}.lora_A",
        b_key=f"{module_path}.lora_B",
        a_shape=a_shape,
        b_shape=b_shape,
        out_features=out_features,
        in_features=in_features,
        rank=rank,
        alpha=float(alpha) if alpha is not None else None,
        scale=float(module.scaling[name]),
        dtype=dtypes[0] if dtypes[0] == dtypes[1] else f"{dtypes[1]}/{dtypes[0]}",
        weight_shape=weight_shape,
        extra_keys=extras,
        dora=bool(module.use_dora.get(name, False)),
        scale_source="config",
    )


def _config(model: Any, name: str) -> dict[str, Any]:
    """The adapter's config as ``adapter_config.json`` would hold it (sets as lists)."""
    configs = getattr(model, "peft_config", None) or {}
    config = configs.get(name)
    if config is None:
        return {}
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    return {key: _plain(value) for key, value in raw.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(str(v) for v in value)
    if isinstance(value, Enum):  # PEFT's PeftType, TaskType
        return value.value
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)
