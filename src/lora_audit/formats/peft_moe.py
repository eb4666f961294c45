"""PEFT ``target_parameters``: LoRA on 3-D MoE expert tensors (gpt-oss, Qwen3-MoE, …).

PEFT 0.21 wraps each targeted ``nn.Parameter`` in a ``ParamWrapper`` whose ``lora_A`` is
``(r·E, in)`` and ``lora_B`` is ``(out, r·E)`` for ``E`` experts; its ``get_delta_weight``
reshapes ``A`` to ``(E, r, in)`` and ``B`` to ``(out, r, E)``, so expert ``e`` is

    ΔW_e = scaling · B[:, e::E] @ A[e·r:(e+1)·r]        scaling = lora_alpha / r (√r: rsLoRA)

(transposed for modules that store ``(E, in, out)``; the singular values are the same).
``r`` and ``lora_alpha`` come from the patterns matched against the parameter's path
(``model.layers.0.mlp.experts.gate_up_proj``). Several parameters of one module are nested
wrappers: the one registered first in the module is innermost, saved under the most
``.base_layer`` segments (``experts.base_layer.lora_A.weight`` for ``gate_up_proj`` when
``down_proj`` is also targeted).

Each expert is reported as its own layer, ``<module>.<param>[e]``. Without the config the
expert count and rank are unknown, so a file that looks like one is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from lora_audit.adapter import LayerKind, LoraLayer, ScaleSource, lora_scale
from lora_audit.errors import InputError
from lora_audit.formats.derived_source import Derive, expert_columns, expert_rows
from lora_audit.formats.patterns import match_pattern

_WRAPPED = ".base_layer"
#: Registration order of expert parameters in transformers v5 MoE modules (innermost first).
_REGISTRATION_ORDER = ("gate_up_proj", "gate_proj", "up_proj", "w1", "w3", "down_proj", "w2")


def unwrapped(name: str) -> tuple[str, int]:
    """``(module path without .base_layer segments, how many there were)``."""
    depth = name.count(_WRAPPED + ".") + int(name.endswith(_WRAPPED))
    parts = [p for p in name.split(".") if p != "base_layer"]
    return ".".join(parts), depth


def looks_like_experts(name: str) -> bool:
    """Whether a module saved by PEFT is a ``ParamWrapper`` (nested, or an ``experts`` module)."""
    module, depth = unwrapped(name)
    return depth > 0 or module.rsplit(".", 1)[-1] == "experts"


def expand_experts(
    layers: list[LoraLayer],
    *,
    target_parameters: tuple[str, ...],
    rank_pattern: Mapping[str, int],
    alpha_pattern: Mapping[str, float],
    r: int | None,
    lora_alpha: float | None,
    rslora: bool,
    origin: ScaleSource,
    tensor_file: Path,
) -> tuple[list[LoraLayer], dict[str, Derive]]:
    """Replace each ``ParamWrapper`` layer by one layer per expert.

    Returns
    -------
    layers, derived
        The layers (others unchanged) and the virtual keys of the experts' factors.

    Raises
    ------
    InputError
        When the config cannot say which parameter, rank or expert count a wrapper has.
    """
    groups: dict[str, list[tuple[int, LoraLayer]]] = {}
    out: list[LoraLayer] = []
    for layer in layers:
        module, depth = unwrapped(layer.name)
        params = _params_of(module, target_parameters)
        if params:
            groups.setdefault(module, []).append((depth, layer))
        elif looks_like_experts(layer.name):
            configured = bool(target_parameters) or origin in {"config", "metadata"}
            raise _refusal(tensor_file, layer.name, configured=configured)
        else:
            out.append(layer)
    derived: dict[str, Derive] = {}
    for module, wrappers in groups.items():
        params = _ordered(_params_of(module, target_parameters), module, tensor_file)
        if len(params) != len(wrappers) or sorted(d for d, _ in wrappers) != list(
            range(len(wrappers))
        ):
            raise InputError(
                f"{tensor_file}: {module}: {len(wrappers)} LoRA wrapper(s) but target_parameters "
                f"names {len(params)} parameter(s) of it ({', '.join(params)})",
                hint="the adapter_config.json does not belong to these weights",
            )
        inner_first = [layer for _, layer in sorted(wrappers, key=lambda w: -w[0])]
        for param, layer in zip(params, inner_first, strict=True):
            path = f"{module}.{param}"
            rank = match_pattern(rank_pattern, path) or r
            alpha = match_pattern(alpha_pattern, path)
            alpha = lora_alpha if alpha is None else alpha
            if rank is None or layer.rank % rank or layer.b_shape[1] != layer.rank:
                raise InputError(
                    f"{tensor_file}: {path}: lora_A has {layer.rank} rows, not a multiple of "
                    f"the configured r = {rank}",
                    hint="PEFT stores r·(number of experts) rows; the config does not match",
                )
            scale = 1.0 if alpha is None else lora_scale(alpha=alpha, rank=rank, rslora=rslora)
            source: ScaleSource = "assumed" if alpha is None else origin
            experts = layer.rank // rank
            for e in range(experts):
                out.append(_expert(layer, path, e, experts, rank, alpha, scale, source, derived))
    return out, derived


def _expert(
    layer: LoraLayer,
    path: str,
    e: int,
    experts: int,
    rank: int,
    alpha: float | None,
    scale: float,
    source: ScaleSource,
    derived: dict[str, Derive],
) -> LoraLayer:
    """Expert ``e`` of a wrapper as a plain layer (virtual keys unless there is one expert)."""
    a_key, b_key = layer.a_key, layer.b_key
    name = path
    if experts > 1:
        name = f"{path}[{e}]"
        a_key, b_key = f"{layer.a_key}[expert {e}]", f"{layer.b_key}[expert {e}]"
        derived[a_key] = expert_rows(layer.a_key, expert=e, rank=rank)
        derived[b_key] = expert_columns(layer.b_key, expert=e, experts=experts)
    return replace(
        layer,
        name=name,
        kind=LayerKind.LINEAR,
        a_key=a_key,
        b_key=b_key,
        a_shape=(rank, layer.in_features),
        b_shape=(layer.out_features, rank),
        rank=rank,
        alpha=alpha,
        scale=scale,
        weight_shape=(layer.out_features, layer.in_features),
        scale_source=source,
    )


def _params_of(module: str, target_parameters: tuple[str, ...]) -> list[str]:
    """Parameter names of ``module`` that PEFT's suffix matching targets."""
    params = []
    for target in target_parameters:
        owner, _, param = target.rpartition(".")
        if owner and (module == owner or module.endswith("." + owner)):
            params.append(param)
    return list(dict.fromkeys(params))


def _ordered(params: list[str], module: str, tensor_file: Path) -> list[str]:
    if len(params) <= 1:
        return params
    unknown = [p for p in params if p not in _REGISTRATION_ORDER]
    if unknown:
        raise InputError(
            f"{tensor_file}: {module}: several target_parameters ({', '.join(params)}) share "
            "one module and lora-audit cannot tell which nested wrapper holds which",
            hint="PEFT nests them in the module's registration order; audit one parameter per "
            "adapter, or report the module's parameter order to lora-audit",
        )
    return sorted(params, key=_REGISTRATION_ORDER.index)


def _refusal(tensor_file: Path, name: str, *, configured: bool) -> InputError:
    where = (
        "the adapter's config names no target_parameters for it"
        if configured
        else "there is no adapter_config.json"
    )
    return InputError(
        f"{tensor_file}: {name!r} looks like a PEFT target_parameters (MoE expert) LoRA, whose "
        f"lora_A/lora_B stack all experts; {where}, so the expert count and rank are unknown",
        hint="put the adapter's adapter_config.json (with target_parameters and r) beside the "
        "file and read the directory",
    )


def wraps_parameter(name: str, target_parameters: tuple[str, ...]) -> bool:
    """Whether the module saved as ``name`` is (or looks like) a ``ParamWrapper``."""
    return bool(_params_of(unwrapped(name)[0], target_parameters)) or looks_like_experts(name)
