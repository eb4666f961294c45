"""PEFT's LoHa, LoKr and AdaLoRA adapters, read the way PEFT 0.21 applies them.

LoHa / LoKr (``peft_type`` ``LOHA`` / ``LOKR``)
    Keys ``base_model.model.<module>.hada_w1_a`` … / ``.lokr_w1`` … (no ``.weight``), the
    LyCORIS factor layouts (:class:`~lora_audit.adapter.Structure`), but PEFT's scale: its
    ``update_layer`` sets ``scaling = alpha / r`` with ``r`` and ``alpha`` from
    ``rank_pattern`` / ``alpha_pattern`` or the top-level ``r`` / ``alpha`` — for LoKr even
    when both Kronecker factors are full (LyCORIS would use 1). ``rank_dropout`` and
    ``rank_dropout_scale`` act in training only (``get_delta_weight(apply_rank_dropout=False)``).
AdaLoRA (``peft_type`` ``ADALORA``)
    ``lora_A`` (r, in), ``lora_E`` (r, 1), ``lora_B`` (out, r); ``SVDLinear.get_delta_weight``
    is ``B @ (A ⊙ E) · scaling / (ranknum + 1e-5)`` with ``scaling = lora_alpha`` (``init_r``
    when ``lora_alpha ≤ 0``) and ``ranknum = init_r``: PEFT 0.21 does not save ``ranknum``
    and restores the initial one when it loads a pruned adapter (``resize_modules_by_rank_
    pattern``). Pruned ranks are already cut out of the saved tensors; a layer pruned to rank
    0 has empty tensors and ``ΔW = 0``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from lora_audit.adapter import Adapter, LoraLayer, ScaleSource, Structure
from lora_audit.errors import InputError
from lora_audit.formats.derived_source import Derive, scaled_rows
from lora_audit.formats.kohya import _layer as structured_layer
from lora_audit.formats.patterns import match_pattern
from lora_audit.formats.safetensors_io import Header, SafetensorsSource, TensorInfo

PREFIX = "base_model.model."
_ROLE = re.compile(
    r"^(?P<module>.+)\.(?P<role>hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2)"
    r"(?:\.[A-Za-z0-9_\-]+)?(?:\.weight)?$"
)
_ADALORA_E = re.compile(r"^(?P<module>.+)\.lora_E(?:\.[A-Za-z0-9_\-]+)?(?:\.weight)?$")
_RANKNUM = re.compile(r"^(?P<module>.+)\.ranknum(?:\.[A-Za-z0-9_\-]+)?(?:\.weight)?$")
ADALORA_EPS = 1e-5


def variant_of_keys(header: Header) -> str | None:
    """``LOHA``, ``LOKR`` or ``ADALORA`` when PEFT-prefixed keys say so, else ``None``."""
    for key in header.tensors:
        if _ADALORA_E.match(key):
            return "ADALORA"
        if key.startswith(PREFIX) and (m := _ROLE.match(key)):
            return "LOHA" if m["role"].startswith("hada") else "LOKR"
    return None


def lycoris_peft_layers(
    header: Header,
    *,
    peft_type: str,
    r: int | None,
    alpha: float | None,
    rank_pattern: Mapping[str, int],
    alpha_pattern: Mapping[str, float],
    origin: ScaleSource,
    tensor_file: Path,
) -> tuple[list[LoraLayer], list[str]]:
    """The LoHa / LoKr layers with PEFT's scale, and the other keys (``modules_to_save``).

    ``origin`` is where ``alpha`` and the patterns came from (config, metadata, option).
    """
    modules: dict[str, dict[str, str]] = {}
    passthrough: list[str] = []
    for key in header.tensors:
        if m := _ROLE.match(key):
            modules.setdefault(m["module"], {})[m["role"]] = key
        else:
            passthrough.append(key)
    if not modules:
        raise InputError(
            f"{tensor_file}: peft_type {peft_type} but no hada_*/lokr_* tensors",
            hint="the adapter_config.json does not belong to these weights",
        )
    layers = []
    for module, roles in modules.items():
        name = module.removeprefix(PREFIX)
        layer = structured_layer(
            name, roles, header.tensors, alpha=None, extras=(), dora=False, tensor_file=tensor_file
        )
        layers.append(
            _peft_scale(
                layer,
                peft_type=peft_type,
                r=match_pattern(rank_pattern, name) or r,
                alpha=_first(match_pattern(alpha_pattern, name), alpha),
                origin=origin,
                tensor_file=tensor_file,
            )
        )
    return layers, passthrough


def _first(a: float | None, b: float | None) -> float | None:
    return b if a is None else a


def _peft_scale(
    layer: LoraLayer,
    *,
    peft_type: str,
    r: int | None,
    alpha: float | None,
    origin: ScaleSource,
    tensor_file: Path,
) -> LoraLayer:
    """``scaling = alpha / r`` as PEFT's LoHa/LoKr ``update_layer`` sets it."""
    stored_r = layer.network_dim  # LoHa: columns of hada_w1_a; LoKr: a low-rank factor's
    kind = "LoHa" if layer.structure is Structure.LOHA else "LoKr"
    if peft_type != ("LOHA" if kind == "LoHa" else "LOKR"):
        raise InputError(
            f"{tensor_file}: {layer.name}: {kind} tensors in a {peft_type} adapter",
            hint="the adapter_config.json does not belong to these weights",
        )
    if r is not None and stored_r is not None and r != stored_r:
        raise InputError(
            f"{tensor_file}: layer {layer.name!r} has rank {stored_r} in its tensors but the "
            f"config gives r = {r}",
            hint="the config does not belong to these weights; use the matching "
            "adapter_config.json",
        )
    rank = r or stored_r
    if alpha is None or rank is None:
        return replace(layer, alpha=alpha, scale=1.0, scale_source="assumed")
    return replace(layer, alpha=alpha, scale=alpha / rank, scale_source=origin)


def adalora_split(header: Header) -> tuple[Header, dict[str, str], dict[str, str], list[str]]:
    """Separate AdaLoRA's extra tensors from the ``lora_A``/``lora_B`` pairs.

    Returns
    -------
    pairs, e_keys, ranknum_keys, pruned
        A header with only the factors of layers that kept some rank (and other keys); each
        module key's ``lora_E`` key and saved ``ranknum`` key (older PEFT); the module names
        pruned to rank 0 (their empty tensors are left out).
    """
    e_keys: dict[str, str] = {}
    ranknum: dict[str, str] = {}
    for key in header.tensors:
        if m := _ADALORA_E.match(key):
            e_keys[m["module"]] = key
        elif m := _RANKNUM.match(key):
            ranknum[m["module"]] = key
    pruned = [module for module, key in e_keys.items() if 0 in header.tensors[key].shape]
    drop = {e_keys[m] for m in e_keys} | set(ranknum.values())
    drop |= {k for k in header.tensors if any(k.startswith(m + ".lora_") for m in pruned)}
    kept: dict[str, TensorInfo] = {k: v for k, v in header.tensors.items() if k not in drop}
    return replace(header, tensors=kept), e_keys, ranknum, [m.removeprefix(PREFIX) for m in pruned]


def adalora_scale(
    *, lora_alpha: float | None, init_r: int | None, ranknum: float | None
) -> float | None:
    """PEFT's ``scaling / (ranknum + 1e-5)``, or ``None`` when the config does not say.

    ``scaling`` is ``lora_alpha`` (``init_r`` when ``lora_alpha ≤ 0``); ``ranknum`` is the
    saved value if the file has one, else ``init_r``.
    """
    denominator = ranknum if ranknum is not None else init_r
    if denominator is None or (lora_alpha is None and init_r is None):
        return None
    scaling = lora_alpha if lora_alpha is not None and lora_alpha > 0 else float(init_r or 0)
    return scaling / (denominator + ADALORA_EPS)


def adalora_layers(
    layers: list[LoraLayer],
    *,
    e_keys: Mapping[str, str],
    ranknum_keys: Mapping[str, str],
    pruned: list[str],
    source: SafetensorsSource,
    lora_alpha: float | None,
    init_r: int | None,
    origin: ScaleSource,
    tensor_file: Path,
) -> tuple[list[LoraLayer], dict[str, Derive], list[str]]:
    """AdaLoRA layers as plain ``B·A′`` layers with ``A′ = lora_A ⊙ lora_E`` (a virtual key).

    The scale is ``lora_alpha / (ranknum + 1e-5)``, ``ranknum`` being the file's saved value
    (older PEFT), else the config's ``init_r``; from the file alone with ``--alpha`` the
    largest stored rank stands in for ``init_r`` (a warning says so).
    """
    notes: list[str] = []
    stand_in = None
    if init_r is None and origin == "option" and not ranknum_keys:
        stand_in = max(layer.rank for layer in layers)
        notes.append(
            f"{tensor_file}: AdaLoRA without adapter_config.json: init_r is unknown; assuming "
            f"it is the largest stored rank, {stand_in} (scale = alpha / (init_r + 1e-5))"
        )
    derived: dict[str, Derive] = {}
    out = []
    for layer in layers:
        module = layer.a_key.rsplit(".lora_A", 1)[0]
        e_key = e_keys.get(module)
        shapes = {(layer.rank, 1), (layer.rank,)}
        if e_key is None or source.header.tensors[e_key].shape not in shapes:
            raise InputError(
                f"{tensor_file}: AdaLoRA layer {layer.name!r} has no lora_E of shape "
                f"({layer.rank}, 1)",
                hint="every AdaLoRA lora_A (r, in) needs its lora_E (r, 1); the file is incomplete",
            )
        ranknum = None
        if module in ranknum_keys:
            ranknum = float(source.get(ranknum_keys[module]).reshape(-1)[0])
        alpha = lora_alpha if origin != "assumed" else None
        scale = adalora_scale(lora_alpha=alpha, init_r=init_r or stand_in, ranknum=ranknum)
        a_key = f"{layer.a_key} ⊙ lora_E"
        derived[a_key] = scaled_rows(layer.a_key, e_key)
        out.append(
            replace(
                layer,
                a_key=a_key,
                alpha=alpha,
                scale=1.0 if scale is None else scale,
                scale_source="assumed" if scale is None else origin,
                extra_keys=(*layer.extra_keys, e_key),
                stored_params=layer.rank * (layer.in_features + layer.out_features + 1),
            )
        )
    if pruned:
        more = f" and {len(pruned) - 5} more" if len(pruned) > 5 else ""
        notes.append(
            f"{tensor_file}: AdaLoRA pruned {len(pruned)} layer(s) to rank 0 (ΔW = 0, not "
            f"listed): {', '.join(pruned[:5])}{more}"
        )
    return out, derived, notes


def assumed_warning(tensor_file: Path, *, peft_type: str, alpha: float | None) -> str:
    """The warning for PEFT layers whose scale nothing in the files gives."""
    if alpha is None:
        what = "alpha" if peft_type in {"LOHA", "LOKR"} else "lora_alpha"
        return (
            f"{tensor_file}: no adapter_config.json and no {what} in the header; "
            "assuming scale 1 (pass --alpha to set it)"
        )
    return (
        f"{tensor_file}: some layers' scale cannot be computed without the adapter's config "
        "(LoKr with two full factors: r is only in adapter_config.json); assuming scale 1 "
        "for them"
    )


def compress_refusal(adapter: Adapter) -> InputError | None:
    """Why ``compress`` cannot write this PEFT variant back, or ``None`` when it can."""
    known = {
        "peft-loha": ("PEFT LoHa", "PEFT rebuilds Hadamard factors, not a truncated B·A"),
        "peft-lokr": ("PEFT LoKr", "PEFT rebuilds Kronecker factors, not a truncated B·A"),
        "peft-adalora": (
            "PEFT AdaLoRA",
            "PEFT restores AdaLoRA ranks from its rank_pattern masks and init_r",
        ),
    }
    refused = next((x for x in adapter.layers if x.write_refusal is not None), None)
    if refused is not None:
        return InputError(
            f"{adapter.path}: compress does not write layer {refused.name!r} back: it is "
            f"{refused.write_refusal}",
            hint="inspect and check read it; to shrink it, retrain at the rank `inspect` suggests",
        )
    what = known.get(adapter.format)
    if what is None and adapter.format == "peft" and adapter.config.get("target_parameters"):
        what = ("PEFT target_parameters (MoE expert)", "all experts of a parameter share one r")
    if what is None:
        return None
    return InputError(
        f"{adapter.path}: compress does not write {what[0]} adapters back: a per-layer "
        f"truncation does not fit the layout PEFT loads ({what[1]})",
        hint="inspect and check read it; to shrink it, retrain at the rank `inspect` suggests",
    )
