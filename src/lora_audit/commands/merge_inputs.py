"""The inputs of ``merge``: checked, combined into one virtual adapter, and the output's template.

* :func:`check_inputs` refuses what cannot be summed exactly: other formats, different
  families or base models, DoRA, layers of one name with different shapes, tensors that are
  not LoRA factors (unless they are the same in every input, or ``drop_extras``).
* :func:`merged_adapter` builds an :class:`Adapter` with one plain LoRA layer per module
  name, of rank ``Σ rᵢ`` and scale 1, whose factors a :class:`MergedSource` stacks on demand
  (:func:`lora_audit.linalg.stacking.stack_factors`) from each input's own thin factors and
  scale (``alpha/r``, rsLoRA, patterns: ``LoraLayer.scale`` as the reader computed it). The
  engine computes its spectra and truncations like any other adapter's, on CPU or GPU.
* :func:`output_template` is the adapter the writer writes: the first input that has each
  layer gives its key names and layout, the config and metadata say what the result is.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lora_audit.adapter import Adapter, LoraLayer, Structure, natural_key
from lora_audit.choices import AdapterFormat
from lora_audit.commands.merge_sense import check_common
from lora_audit.errors import InputError, UsageError
from lora_audit.linalg.stacking import stack_factors

if TYPE_CHECKING:
    from lora_audit.linalg.spectral import Float64Array

_F = AdapterFormat
#: Format → family (the format a merge is written in): adapters merge only within one family.
FAMILIES = {_F.PEFT: _F.PEFT, _F.KOHYA: _F.KOHYA, _F.LYCORIS: _F.KOHYA}
#: PEFT config fields that say which modules are adapted.
TARGETING = ("target_modules", "layers_to_transform", "layers_pattern", "exclude_modules")
#: PEFT task types whose model classes add their head to ``modules_to_save`` on load.
HEAD_TASKS = frozenset({"SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS"})
#: kohya metadata that describes one input's training or bytes, not the merge.
_STALE_PREFIXES = ("sshs_", "modelspec.hash", "ss_network_args", "ss_network_module")


def check_weights(weights: Sequence[float] | None, *, count: int) -> tuple[float, ...]:
    """The weights, one per input (all 1 when none are given).

    Raises
    ------
    UsageError
        For a count that does not match the inputs, or a weight that is not finite.
    """
    if weights is None:
        return (1.0,) * count
    if len(weights) != count:
        raise UsageError(
            f"--weights has {len(weights)} value(s) for {count} adapters",
            hint="give one weight per adapter, in order, e.g. --weights 0.8,1.0",
        )
    for w in weights:
        if not math.isfinite(w):
            raise UsageError(f"--weights: {w} is not a finite number")
    return tuple(float(w) for w in weights)


def check_inputs(adapters: Sequence[Adapter], *, drop_extras: bool) -> None:
    """Refuse inputs whose weighted sum this command cannot write exactly.

    Raises
    ------
    UsageError
        For fewer than two adapters.
    InputError
        One line naming the file and what is refused.
    """
    if len(adapters) < 2:
        raise UsageError("merge needs at least two adapters", hint="lora-audit merge A B -o OUT")
    first = adapters[0]
    for adapter in adapters:
        _check_one(adapter)
        if FAMILIES[adapter.format] != FAMILIES[first.format]:
            raise InputError(
                f"{adapter.path}: a {adapter.format} adapter cannot be merged with "
                f"{first.path} ({first.format}): the layers of the two formats do not match",
                hint="merge PEFT adapters with PEFT adapters and kohya/LyCORIS files together",
            )
    _check_base(adapters)
    check_common(adapters)
    _check_shapes(adapters)
    if not drop_extras:
        _check_extras(adapters)


def _check_one(adapter: Adapter) -> None:
    if adapter.format not in FAMILIES:
        raise InputError(
            f"{adapter.path}: merge reads PEFT LoRA and kohya/LyCORIS adapters, not "
            f"{adapter.format}",
            hint="inspect and check read it; merge the PEFT or kohya adapter it came from",
        )
    if adapter.config.get("target_parameters"):
        raise InputError(
            f"{adapter.path}: PEFT target_parameters (MoE expert) adapters are not merged: "
            "all experts of a parameter share one r",
        )
    for layer in adapter.layers:
        if layer.write_refusal is not None:
            raise InputError(
                f"{adapter.path}: merge does not write layer {layer.name!r} back: it is "
                f"{layer.write_refusal}",
                hint="inspect and check read it; merge adapters without such layers",
            )
        if layer.dora:
            raise InputError(
                f"{adapter.path}: layer {layer.name!r} is DoRA: its magnitude vector rescales "
                "the whole weight, so DoRA updates do not add up",
                hint="merge plain LoRA adapters (DoRA merges need the base weights)",
            )
        extra = [k for k in layer.extra_keys if k != f"{layer.name}.alpha"]
        if extra:
            raise InputError(
                f"{adapter.path}: layer {layer.name!r} has {extra[0]!r}, which is not part of "
                "a sum of B·A products",
                hint="merge adapters without LoRA biases or other per-layer tensors",
            )


def _check_base(adapters: Sequence[Adapter]) -> None:
    """The same base model (where the files say) and the same weight orientation."""
    checks: tuple[tuple[str, Callable[[Adapter], object]], ...]
    if FAMILIES[adapters[0].format] is _F.PEFT:
        checks = (
            ("base_model_name_or_path", lambda a: a.config.get("base_model_name_or_path")),
            ("fan_in_fan_out", lambda a: bool(a.config.get("fan_in_fan_out", False))),
        )
    else:
        checks = (
            ("ss_base_model_version", lambda a: a.metadata.get("ss_base_model_version")),
            ("ss_v2", lambda a: a.metadata.get("ss_v2")),
        )
    for key, value in checks:
        seen: dict[str, Adapter] = {}
        for adapter in adapters:
            v = value(adapter)
            if v is not None and v != "":
                seen.setdefault(str(v), adapter)
        if len(seen) > 1:
            (v1, a1), (v2, a2) = list(seen.items())[:2]
            raise InputError(
                f"{a2.path}: {key} is {v2!r} but {a1.path} has {v1!r}: the adapters were "
                "not trained on the same base model",
                hint="merge adapters of one base model (the sum of their updates means nothing "
                "otherwise)",
            )


def _check_shapes(adapters: Sequence[Adapter]) -> None:
    seen: dict[str, tuple[Adapter, LoraLayer]] = {}
    for adapter in adapters:
        for layer in adapter.layers:
            if layer.name not in seen:
                seen[layer.name] = (adapter, layer)
                continue
            other, first = seen[layer.name]
            if (layer.kind, layer.weight_shape) != (first.kind, first.weight_shape):
                raise InputError(
                    f"{adapter.path}: layer {layer.name!r} adapts a {layer.kind} weight of shape "
                    f"{list(layer.weight_shape)} but {other.path} a {first.kind} of shape "
                    f"{list(first.weight_shape)}: not the same base model",
                    hint="merge adapters of one base model",
                )


def _check_extras(adapters: Sequence[Adapter]) -> None:
    """Tensors that are not LoRA factors must be the same in every input."""
    first = adapters[0]
    for adapter in adapters[1:]:
        keys, first_keys = set(adapter.passthrough_keys), set(first.passthrough_keys)
        differ = sorted(keys ^ first_keys) or [
            k for k in sorted(keys) if _stored(adapter, k) != _stored(first, k)
        ]
        if differ:
            raise InputError(
                f"{adapter.path}: tensor {differ[0]!r} is not a LoRA factor and is not the same "
                f"in {first.path}: merge cannot combine it",
                hint="pass --drop-extras to write the merged LoRA layers only (modules_to_save "
                "heads and other such tensors are then left out)",
            )


def _stored(adapter: Adapter, key: str) -> tuple[str, tuple[int, ...], bytes]:
    raw = getattr(adapter.source, "raw", None)
    if raw is not None:
        t = raw(key)
        return t.dtype, tuple(t.shape), bytes(t.data)
    assert adapter.source is not None
    array = np.ascontiguousarray(adapter.source.get(key))
    return str(array.dtype), tuple(array.shape), array.tobytes()


@dataclass(frozen=True, kw_only=True)
class Part:
    """One input's share of a merged layer: its layer and ``weight·scale``."""

    adapter: Adapter
    layer: LoraLayer
    coefficient: float
    index: int


class MergedSource:
    """A :class:`~lora_audit.adapter.TensorSource` of the stacked factors of merged layers.

    ``get("<name>#merge.B")`` and ``get("<name>#merge.A")`` return the two factors of
    ``Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ`` (float64). Both are built on the first request and the other is kept
    until it is asked for, so each input layer is read once per pass. Thread-safe.
    """

    def __init__(self, parts: Mapping[str, tuple[Part, ...]]) -> None:
        self.parts = parts
        #: Per layer, ``Σᵢ |wᵢsᵢ|·‖Bᵢ‖_F·‖Aᵢ‖_F``: how large the sum could be (set when read).
        self.bounds: dict[str, float] = {}
        self._pending: dict[str, Float64Array] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Float64Array:
        name, _, role = key.rpartition("#merge.")
        with self._lock:
            if key in self._pending:
                return self._pending.pop(key)
        b, a = self.stacked(name)
        other = f"{name}#merge.{'A' if role == 'B' else 'B'}"
        with self._lock:
            self._pending[other] = a if role == "B" else b
        return b if role == "B" else a

    def stacked(self, name: str) -> tuple[Float64Array, Float64Array]:
        """``(B, A)`` of the merged layer ``name``: (out, Σrᵢ) and (Σrᵢ, in), float64."""
        parts = self.parts[name]
        pairs = []
        for part in parts:
            b, a = part.adapter.load_factors(part.layer)
            for key, factor in ((part.layer.b_key, b), (part.layer.a_key, a)):
                if not np.isfinite(factor).all():
                    raise InputError(
                        f"{part.adapter.tensor_file}: tensor {key!r} contains NaN or Inf",
                        hint="the training run diverged or the file is corrupt",
                    )
            pairs.append((b, a))
        bound = sum(
            abs(p.coefficient) * float(np.linalg.norm(b)) * float(np.linalg.norm(a))
            for p, (b, a) in zip(parts, pairs, strict=True)
        )
        with self._lock:
            self.bounds[name] = bound
        return stack_factors(pairs, coefficients=[p.coefficient for p in parts])


def layer_parts(
    adapters: Sequence[Adapter], weights: Sequence[float]
) -> dict[str, tuple[Part, ...]]:
    """Every module name, in natural order, with the inputs' layers that adapt it."""
    parts: dict[str, list[Part]] = {}
    for index, (adapter, w) in enumerate(zip(adapters, weights, strict=True)):
        for layer in adapter.layers:
            part = Part(adapter=adapter, layer=layer, coefficient=w * layer.scale, index=index)
            parts.setdefault(layer.name, []).append(part)
    return {name: tuple(parts[name]) for name in sorted(parts, key=natural_key)}


def merged_adapter(adapters: Sequence[Adapter], parts: Mapping[str, tuple[Part, ...]]) -> Adapter:
    """The virtual adapter whose layer ``name`` is the stacked product (scale 1, rank Σrᵢ)."""
    layers = []
    for name, shares in parts.items():
        first = shares[0].layer
        rank = sum(p.layer.rank for p in shares)
        layers.append(
            replace(
                first,
                a_key=f"{name}#merge.A",
                b_key=f"{name}#merge.B",
                a_shape=(rank, first.in_features),
                b_shape=(first.out_features, rank),
                rank=rank,
                alpha=None,
                scale=1.0,
                dtype="F64",
                extra_keys=(),
                structure=Structure.LORA,
                keys={},
                stored_params=None,
                network_dim=None,
                scale_source="fixed",
            )
        )
    return Adapter(
        path=adapters[0].path,
        tensor_file=adapters[0].tensor_file,
        format=_F.MERGED,
        layers=tuple(layers),
        source=MergedSource(parts),
    )


def output_template(
    adapters: Sequence[Adapter], parts: Mapping[str, tuple[Part, ...]], *, drop_extras: bool
) -> Adapter:
    """What the writer writes: one layer per name (from the first input that has it)."""
    first = adapters[0]
    family = FAMILIES[first.format]
    layers = tuple(replace(shares[0].layer, extra_keys=()) for shares in parts.values())
    metadata = {
        k: v
        for k, v in first.metadata.items()
        if all(a.metadata.get(k) == v for a in adapters[1:]) and not k.startswith(_STALE_PREFIXES)
    }
    config: dict[str, Any] = {}
    if family is _F.PEFT:
        config = _peft_config(adapters, parts, drop_extras=drop_extras)
        if "lora_adapter_metadata" in first.metadata:  # a bare file: written as one again
            metadata["lora_adapter_metadata"] = first.metadata["lora_adapter_metadata"]
    elif any("ss_network_dim" in a.metadata for a in adapters):
        metadata.update(ss_network_dim="", ss_network_module="networks.lora")  # set by writer
    return Adapter(
        path=first.path,
        tensor_file=first.tensor_file,
        format=family,
        layers=layers,
        passthrough_keys=() if drop_extras else first.passthrough_keys,
        modules_to_save=() if drop_extras else first.modules_to_save,
        config=config,
        metadata=metadata,
        base_model=first.base_model,
        source=first.source,
    )


def _peft_config(
    adapters: Sequence[Adapter], parts: Mapping[str, tuple[Part, ...]], *, drop_extras: bool
) -> dict[str, Any]:
    """The first input's config, targeting every merged module (ranks: the writer's patterns)."""
    first = adapters[0]
    config = dict(first.config)
    if any(a.config.get(k) != first.config.get(k) for a in adapters for k in TARGETING):
        # the inputs target different modules: name every merged one (PEFT matches a full
        # name exactly, or as a dotted suffix of the model's module path)
        config.update(
            target_modules=list(parts),
            layers_to_transform=None,
            layers_pattern=None,
            exclude_modules=None,
        )
    if drop_extras:
        config["modules_to_save"] = None
        if config.get("task_type") in HEAD_TASKS:  # PEFT would expect the head's tensors
            config["task_type"] = None
    return config


def drop_warning(adapters: Sequence[Adapter], *, drop_extras: bool) -> str | None:
    """What ``drop_extras`` left out, when it left something out."""
    keys = sorted({k for a in adapters for k in a.passthrough_keys})
    if not drop_extras or not keys:
        return None
    task = adapters[0].config.get("task_type")
    note = (
        f"; task_type {task} set to null, since PEFT would look for the head's tensors"
        if task in HEAD_TASKS
        else ""
    )
    return (
        f"--drop-extras: {len(keys)} tensor(s) that are not LoRA factors left out (e.g. "
        f"{keys[0]!r}): the merged adapter has no modules_to_save{note}"
    )
