"""Two PEFT LoRA layouts that are not one ``lora_A``/``lora_B`` pair per weight of the base.

``nn.MultiheadAttention`` (PEFT's ``lora.MultiheadAttention``)
    PEFT wraps the attention module and its ``out_proj`` (an ``nn.Linear`` it replaces by a
    ``lora.Linear``); it saves ``<mha>.lora_A/B`` for the packed ``in_proj_weight``
    ``(3·E, E)`` and ``<mha>.base_layer.out_proj.lora_A/B`` for ``out_proj``. Its
    ``get_delta_weight`` is ``scaling · lora_B @ lora_A`` for both, and ``out_proj`` is built
    with the *attention module's* ``r`` and ``lora_alpha`` (``update_layer`` passes them on), so
    both scales come from the patterns matched against ``<mha>``, not ``…out_proj``. The two are
    reported as ``<mha>`` (``in_proj``, PEFT's own module name) and ``<mha>.out_proj`` (the
    base model's module). One ``r`` for both means a per-layer truncation cannot be loaded back:
    ``compress`` and ``merge`` refuse it by name.

LoRA on a grouped convolution (``groups = G > 1``)
    PEFT keeps ``lora_A`` a dense ``Conv(in, r, k)`` and makes ``lora_B`` a grouped
    ``Conv(r, out, 1, groups=G)``, stored ``(out, r/G, 1, …)``: output channel ``o`` of group
    ``g = o // (out/G)`` reads rank channels ``g·r/G … (g+1)·r/G − 1``. The layer's ``forward``
    adds ``scaling · lora_B(lora_A(x))``, the dense convolution with kernel
    ``scaling · B_full @ A`` where ``B_full`` is the block-diagonal ``(out, r)`` matrix of the
    stored ``lora_B``: that is what is audited (``B`` under a virtual key). It does not fit the
    base weight's ``(out, in/G, k)`` shape (PEFT's ``merge`` raises for it), so ``compress``,
    ``merge`` and ``--base`` refuse it by name.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lora_audit.adapter import LoraLayer, ScaleSource, lora_scale
from lora_audit.errors import InputError
from lora_audit.formats.derived_source import Derive
from lora_audit.formats.patterns import match_pattern

if TYPE_CHECKING:
    from lora_audit.formats.peft import PeftConfig
    from lora_audit.formats.safetensors_io import SafetensorsSource

_OUT_PROJ = ".base_layer.out_proj"
_GROUPED = re.compile(r"^(?P<key>.+)\[block-diagonal, groups=(?P<groups>\d+)\]\Z", re.DOTALL)

MHA_REFUSAL = (
    "a LoRA on nn.MultiheadAttention: PEFT builds its in_proj and out_proj with one r and "
    "lora_alpha, so a per-layer rank does not load back"
)
GROUPED_REFUSAL = (
    "a LoRA on a grouped convolution: its ΔW is a dense convolution that does not fit the "
    "base weight (PEFT cannot merge it either)"
)


def conv_groups(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> int:
    """``G`` when ``lora_B`` is PEFT's grouped ``(out, r/G, 1, …)`` beside a conv ``lora_A``;
    1 otherwise."""
    rank = a_shape[0]
    if len(a_shape) < 3 or len(b_shape) != len(a_shape) or any(d != 1 for d in b_shape[2:]):
        return 1
    per_group = b_shape[1]
    if not 0 < per_group < rank or rank % per_group or b_shape[0] % (rank // per_group):
        return 1
    return rank // per_group


def grouped_layer(layer: LoraLayer, *, groups: int) -> LoraLayer:
    """``layer`` (read with the stored grouped ``lora_B``) with ``B`` as its block-diagonal."""
    stored = math.prod(layer.a_shape) + math.prod(layer.b_shape)
    return replace(
        layer,
        b_key=f"{layer.b_key}[block-diagonal, groups={groups}]",
        b_shape=(layer.out_features, layer.rank),
        conv_groups=groups,
        stored_params=stored,
        write_refusal=GROUPED_REFUSAL,
    )


def grouped_factors(layers: list[LoraLayer]) -> dict[str, Derive]:
    """The virtual ``B`` of each grouped-convolution layer: its block-diagonal ``(out, r)``."""
    derived: dict[str, Derive] = {}
    for layer in layers:
        if layer.conv_groups > 1 and (m := _GROUPED.match(layer.b_key)):
            derived[layer.b_key] = _block_diagonal(
                m["key"], groups=layer.conv_groups, out=layer.out_features, rank=layer.rank
            )
    return derived


def grouped_warnings(layers: list[LoraLayer], *, where: str) -> list[str]:
    """One line naming the grouped-convolution layers and how they were read, if any."""
    grouped = [f"{x.name} (groups={x.conv_groups})" for x in layers if x.conv_groups > 1]
    if not grouped:
        return []
    shown = ", ".join(grouped[:3]) + (f", … {len(grouped) - 3} more" if len(grouped) > 3 else "")
    return [
        f"{where}: LoRA on grouped convolution(s) {shown}: audited as the dense convolution "
        "scaling·lora_B(lora_A(x)) that the layer's forward adds; PEFT cannot merge it into "
        "the grouped base weight, so compress, merge and --base refuse it"
    ]


def _block_diagonal(key: str, *, groups: int, out: int, rank: int) -> Derive:
    def make(base: SafetensorsSource) -> Any:
        stored = base.get(key).reshape(out, rank // groups)
        full = np.zeros((out, rank), dtype=stored.dtype)
        rows, cols = out // groups, rank // groups
        for g in range(groups):
            block = slice(g * rows, (g + 1) * rows)
            full[block, g * cols : (g + 1) * cols] = stored[block]
        return full

    return make


def multihead_attention(
    layers: list[LoraLayer],
    *,
    config: PeftConfig,
    origins: tuple[ScaleSource | None, ScaleSource],
    where: str,
) -> tuple[list[LoraLayer], list[LoraLayer]]:
    """Split off the layers of PEFT ``MultiheadAttention`` wrappers, read as PEFT builds them.

    Returns
    -------
    attention, others
        The ``in_proj`` and ``out_proj`` layer of every wrapper (``<mha>``,
        ``<mha>.out_proj``), with the wrapper's scale; the other layers unchanged.

    Raises
    ------
    InputError
        When a layer's rank is not the ``r`` the config gives the attention module.
    """
    names = {layer.name for layer in layers}
    modules = {
        layer.name.removesuffix(_OUT_PROJ)
        for layer in layers
        if layer.name.endswith(_OUT_PROJ) and layer.name.removesuffix(_OUT_PROJ) in names
    }
    modules -= {m for m in modules if _is_param_target(m, config.target_parameters)}
    attention: list[LoraLayer] = []
    others: list[LoraLayer] = []
    for layer in layers:
        module = layer.name.removesuffix(_OUT_PROJ)
        if module not in modules:
            others.append(layer)
            continue
        rank = match_pattern(config.rank_pattern, module) or config.r
        if rank is not None and config.lora_alpha is not None and rank != layer.rank:
            raise InputError(
                f"{where}: layer {layer.name!r} has rank {layer.rank} in its tensors but the "
                f"config gives the attention module {module!r} r = {rank}",
                hint="the config does not belong to these weights; use the matching "
                "adapter_config.json",
            )
        alpha = match_pattern(config.alpha_pattern, module)
        source = origins[0] or "assumed"
        if alpha is None:
            alpha, source = config.lora_alpha, origins[1]
        scale = (
            1.0
            if alpha is None
            else lora_scale(alpha=alpha, rank=layer.rank, rslora=config.use_rslora)
        )
        name = module if layer.name == module else f"{module}.out_proj"
        attention.append(
            replace(
                layer,
                name=name,
                alpha=alpha,
                scale=scale,
                scale_source=source if alpha is not None else "assumed",
                write_refusal=MHA_REFUSAL,
            )
        )
    return attention, others


def _is_param_target(module: str, target_parameters: tuple[str, ...]) -> bool:
    from lora_audit.formats.peft_moe import wraps_parameter

    return bool(target_parameters) and wraps_parameter(module, target_parameters)
