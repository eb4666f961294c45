"""PEFT adapters: a directory with ``adapter_config.json`` and ``adapter_model.safetensors``.

Keys look like ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` (Linear,
Conv1D, conv) or ``base_model.model.<module>.lora_embedding_A`` / ``_B`` (embedding). The
rank of a layer is read from its tensors; its ``lora_alpha`` from ``alpha_pattern`` or the
top-level value, with PEFT's own matching (:mod:`lora_audit.formats.patterns`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_audit.adapter import Adapter, LayerKind, LoraLayer, ScaleSource, lora_scale, natural_key
from lora_audit.choices import AdapterFormat
from lora_audit.errors import InputError
from lora_audit.formats.config_checks import (
    check_lora_numbers,
    check_one_adapter_name,
    zero_scale_warning,
)
from lora_audit.formats.config_files import load_json_file, parse_json
from lora_audit.formats.derived_source import Derive, DerivedSource
from lora_audit.formats.patterns import match_pattern
from lora_audit.formats.peft_init import init_warnings
from lora_audit.formats.peft_layouts import (
    conv_groups,
    grouped_factors,
    grouped_layer,
    grouped_warnings,
    multihead_attention,
)
from lora_audit.formats.peft_moe import expand_experts, wraps_parameter
from lora_audit.formats.peft_variants import (
    adalora_layers,
    adalora_split,
    assumed_warning,
    lycoris_peft_layers,
    variant_of_keys,
)
from lora_audit.formats.safetensors_io import (
    FLOAT_DTYPES,
    Header,
    SafetensorsSource,
    TensorInfo,
    read_header,
)
from lora_audit.formats.sniff import no_factors_error

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."

_FACTOR = re.compile(
    r"^(?P<module>.+)\.(?P<which>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?(?P<suffix>\.weight)?\Z",
    re.DOTALL,  # a module name may hold any character, a line break too: never skip it
)
_EXTRA = re.compile(
    r"^(?P<module>.+)\.(?:lora_B\.bias|lora_magnitude_vector(?:\.weight)?)\Z", re.DOTALL
)
_SUPPORTED_PEFT_TYPES = {"LORA", "LOHA", "LOKR", "ADALORA"}
#: ``Adapter.format`` of the PEFT types other than LoRA.
_VARIANT_FORMATS = {
    "LOHA": AdapterFormat.PEFT_LOHA,
    "LOKR": AdapterFormat.PEFT_LOKR,
    "ADALORA": AdapterFormat.PEFT_ADALORA,
}


@dataclass(frozen=True, kw_only=True)
class PeftConfig:
    """The fields of ``adapter_config.json`` that decide each layer's scale."""

    r: int | None
    lora_alpha: float | None
    use_rslora: bool
    rank_pattern: Mapping[str, int]
    alpha_pattern: Mapping[str, float]
    use_dora: bool
    modules_to_save: tuple[str, ...]
    base_model: str | None
    raw: Mapping[str, Any]
    peft_type: str = "LORA"
    init_r: int | None = None
    target_parameters: tuple[str, ...] = ()


def module_name(key_module: str) -> str:
    """The module path in the base model: PEFT's ``base_model.model.`` prefix removed."""
    return key_module.removeprefix(PREFIX)


def parse_config(raw: Mapping[str, Any], *, where: str) -> PeftConfig:
    """Validate the fields lora-audit uses; every other field is kept but ignored.

    Raises
    ------
    InputError
        For a ``peft_type`` other than LoRA, LoHa, LoKr or AdaLoRA, ``r ≤ 0``, a non-numeric
        ``lora_alpha`` (``alpha`` for LoHa/LoKr) or malformed patterns.
    """
    peft_type = str(raw.get("peft_type", "LORA")).upper()
    if peft_type not in _SUPPORTED_PEFT_TYPES:
        raise InputError(
            f"{where}: peft_type {peft_type!r} is not supported",
            hint="lora-audit reads PEFT LoRA (and DoRA), LoHa, LoKr and AdaLoRA adapters; "
            "IA3, OFT/BOFT, VeRA, … are not low-rank B·A updates",
        )
    masks_removed = {**raw, "rank_pattern": None} if peft_type == "ADALORA" else raw
    check_lora_numbers(masks_removed, where=where)  # AdaLoRA's rank_pattern holds masks
    r, init_r = raw.get("r"), raw.get("init_r") if peft_type == "ADALORA" else None
    for field_name, value in (("r", r), ("init_r", init_r)):
        bad = isinstance(value, bool) or not isinstance(value, int) or value <= 0
        if value is not None and bad:
            raise InputError(f"{where}: {field_name} = {value!r} must be a positive integer")
    alpha_field = "alpha" if peft_type in {"LOHA", "LOKR"} else "lora_alpha"
    alpha = raw.get(alpha_field)
    if alpha is not None and (
        isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha)
    ):
        raise InputError(f"{where}: {alpha_field} = {alpha!r} must be a finite number")
    # AdaLoRA saves its pruning masks as rank_pattern; the stored tensors are already pruned
    rank_pattern = (raw.get("rank_pattern") or {}) if peft_type != "ADALORA" else {}
    alpha_pattern = raw.get("alpha_pattern") or {}
    for name, pattern, kind in (
        ("rank_pattern", rank_pattern, int),
        ("alpha_pattern", alpha_pattern, (int, float)),
    ):
        if not isinstance(pattern, dict) or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in pattern.values()
        ):
            raise InputError(
                f"{where}: {name} must map module patterns to numbers",
                hint="AdaLoRA-style boolean masks are not supported",
            )
    base = raw.get("base_model_name_or_path")
    return PeftConfig(
        r=r,
        lora_alpha=float(alpha) if alpha is not None else None,
        use_rslora=bool(raw.get("use_rslora", False)),
        rank_pattern=rank_pattern,
        alpha_pattern={k: float(v) for k, v in alpha_pattern.items()},
        use_dora=bool(raw.get("use_dora", False)),
        modules_to_save=_strings(raw.get("modules_to_save")),
        base_model=str(base) if base else None,
        raw=dict(raw),
        peft_type=peft_type,
        init_r=init_r,
        target_parameters=_strings(raw.get("target_parameters")),
    )


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def read_config(path: Path) -> PeftConfig:
    """Read and validate an ``adapter_config.json``."""
    raw = load_json_file(path, what="adapter config")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: must contain a JSON object")
    return parse_config(raw, where=str(path))


def config_from_metadata(header: Header, *, where: str) -> PeftConfig | None:
    """The LoRA config that diffusers stores in the header as ``lora_adapter_metadata``."""
    text = header.metadata.get("lora_adapter_metadata")
    if text is None:
        return None
    raw = parse_json(text, where=f"{where}: lora_adapter_metadata in the header")
    if not isinstance(raw, dict):
        raise InputError(f"{where}: lora_adapter_metadata in the header is not a JSON object")
    return parse_config(raw, where=f"{where} (lora_adapter_metadata)")


def looks_like_peft(header: Header) -> bool:
    """True when any key is a PEFT LoRA factor, or a PEFT LoHa/LoKr/AdaLoRA tensor."""
    if any(_FACTOR.match(k) for k in header.tensors) or variant_of_keys(header) is not None:
        return True
    text = header.metadata.get("lora_adapter_metadata", "")
    return bool(re.search(r'"peft_type"\s*:\s*"(LOHA|LOKR)"', text))


def read_peft(
    *,
    path: Path,
    tensor_file: Path,
    config_file: Path | None,
    alpha: float | None,
    header: Header | None = None,
) -> Adapter:
    """Read a PEFT adapter.

    Parameters
    ----------
    path
        What the user named (directory or file), recorded in the report.
    tensor_file
        The ``adapter_model.safetensors`` file.
    config_file
        ``adapter_config.json``, or ``None`` when there is none.
    alpha
        ``--alpha`` from the command line: used only when no config gives one.
    """
    header = header or read_header(tensor_file)
    config, origin = _config(header, config_file=config_file, tensor_file=tensor_file)
    keys_say = variant_of_keys(header)
    peft_type = config.peft_type if origin is not None else keys_say or "LORA"
    if keys_say is not None and keys_say != peft_type:
        raise InputError(
            f"{config_file or tensor_file}: peft_type {peft_type} but the tensors are "
            f"{keys_say} ({tensor_file.name})",
            hint="the adapter_config.json does not belong to these weights",
        )
    top_origin: ScaleSource = origin or "assumed"
    if config.lora_alpha is None and alpha is not None:
        field_name = "alpha" if peft_type in {"LOHA", "LOKR"} else "lora_alpha"
        typed = {"peft_type": peft_type} if peft_type != "LORA" else {}
        config = parse_config({**config.raw, **typed, field_name: alpha}, where="--alpha")
        top_origin = "option"
    where = str(config_file or tensor_file)
    warnings = init_warnings(config.raw, where=where)
    derived: dict[str, Derive] = {}
    fmt = _VARIANT_FORMATS.get(peft_type)
    if peft_type in {"LOHA", "LOKR"}:
        layers, passthrough = lycoris_peft_layers(
            header,
            peft_type=peft_type,
            r=config.r,
            alpha=config.lora_alpha,
            rank_pattern=config.rank_pattern,
            alpha_pattern=config.alpha_pattern,
            origin=top_origin,
            tensor_file=tensor_file,
        )
    elif peft_type == "ADALORA":
        layers, passthrough, derived, notes = _read_adalora(
            header, config=config, origin=top_origin, tensor_file=tensor_file
        )
        warnings += notes
    else:
        layers, passthrough = _pair_layers(
            header, config=config, tensor_file=tensor_file, origins=(origin, top_origin)
        )
        attention, layers = multihead_attention(
            layers, config=config, origins=(origin, top_origin), where=where
        )
        if config.lora_alpha is not None and config.r is not None:
            plain = [x for x in layers if not wraps_parameter(x.name, config.target_parameters)]
            _check_ranks(plain, config=config, where=where)
        layers, derived = expand_experts(
            layers,
            target_parameters=config.target_parameters,
            rank_pattern=config.rank_pattern,
            alpha_pattern=config.alpha_pattern,
            r=config.r,
            lora_alpha=config.lora_alpha,
            rslora=config.use_rslora,
            origin=top_origin,
            tensor_file=tensor_file,
        )
        layers += attention
    derived = {**derived, **grouped_factors(layers)}
    warnings += grouped_warnings(layers, where=str(tensor_file))
    layers.sort(key=lambda layer: natural_key(layer.name))
    warnings += zero_scale_warning(layers, where=where)
    if any(layer.scale_source == "assumed" for layer in layers):
        warnings.append(assumed_warning(tensor_file, peft_type=peft_type, alpha=config.lora_alpha))
    base = SafetensorsSource(tensor_file, header)
    return Adapter(
        path=path,
        tensor_file=tensor_file,
        format=fmt or AdapterFormat.PEFT,
        layers=tuple(layers),
        passthrough_keys=tuple(passthrough),
        modules_to_save=config.modules_to_save,
        config=config.raw,
        metadata=header.metadata,
        base_model=config.base_model,
        warnings=tuple(warnings),
        source=DerivedSource(base=base, derived=derived) if derived else base,
    )


def _config(
    header: Header, *, config_file: Path | None, tensor_file: Path
) -> tuple[PeftConfig, ScaleSource | None]:
    """The config and where it came from (``None``: there is none; defaults are used)."""
    if config_file is not None:
        return read_config(config_file), "config"
    config = config_from_metadata(header, where=str(tensor_file))
    if config is not None:
        return config, "metadata"
    return parse_config({}, where=str(tensor_file)), None


def _read_adalora(
    header: Header, *, config: PeftConfig, origin: ScaleSource, tensor_file: Path
) -> tuple[list[LoraLayer], list[str], dict[str, Derive], list[str]]:
    """AdaLoRA layers: ``lora_A ⊙ lora_E`` as ``A``, scale ``lora_alpha / (init_r + 1e-5)``."""
    pairs, e_keys, ranknum_keys, pruned = adalora_split(header)
    layers, passthrough = _pair_layers(
        pairs, config=config, tensor_file=tensor_file, origins=(origin, origin)
    )
    passthrough += [k for k in header.tensors if k not in pairs.tensors]
    layers, derived, notes = adalora_layers(
        layers,
        e_keys=e_keys,
        ranknum_keys=ranknum_keys,
        pruned=pruned,
        source=SafetensorsSource(tensor_file, header),
        lora_alpha=config.lora_alpha,
        init_r=config.init_r,
        origin=origin,
        tensor_file=tensor_file,
    )
    return layers, passthrough, derived, notes


def _pair_layers(
    header: Header,
    *,
    config: PeftConfig,
    tensor_file: Path,
    origins: tuple[ScaleSource | None, ScaleSource],
) -> tuple[list[LoraLayer], list[str]]:
    """Pair ``lora_A``/``lora_B`` per module; ``origins``: of the patterns, of ``lora_alpha``."""
    factors: dict[str, dict[str, str]] = {}
    extras: dict[str, list[str]] = {}
    passthrough: list[str] = []
    check_one_adapter_name(header.tensors, where=str(tensor_file))
    for key in header.tensors:
        if m := _EXTRA.match(key):
            extras.setdefault(m["module"], []).append(key)
            passthrough.append(key)
        elif m := _FACTOR.match(key):
            side = "A" if m["which"].endswith("A") else "B"
            slot = factors.setdefault(m["module"], {})
            if side in slot:
                raise InputError(
                    f"{tensor_file}: module {module_name(m['module'])!r} has two lora_{side} "
                    f"tensors ({slot[side]!r} and {key!r})",
                    hint="the file holds several adapters; save them separately",
                )
            slot[side] = key
        else:
            passthrough.append(key)
    halves = [
        f"{module_name(mod)} (only {next(iter(slot.values()))!r})"
        for mod, slot in factors.items()
        if len(slot) != 2
    ]
    if halves:
        shown = "; ".join(halves[:3]) + (f"; … {len(halves) - 3} more" if len(halves) > 3 else "")
        raise InputError(
            f"{tensor_file}: {len(halves)} LoRA factor(s) without their partner: {shown}",
            hint="every lora_A needs its lora_B; the file is incomplete",
        )
    if not factors:
        raise no_factors_error(tensor_file, header.tensors)
    layers = [
        _make_layer(
            module_key=mod,
            a_key=slot["A"],
            b_key=slot["B"],
            a=header.tensors[slot["A"]],
            b=header.tensors[slot["B"]],
            extras=tuple(extras.get(mod, ())),
            config=config,
            tensor_file=tensor_file,
            origins=origins,
        )
        for mod, slot in factors.items()
    ]
    layers.sort(key=lambda layer: natural_key(layer.name))
    return layers, passthrough


def _make_layer(
    *,
    module_key: str,
    a_key: str,
    b_key: str,
    a: TensorInfo,
    b: TensorInfo,
    extras: tuple[str, ...],
    config: PeftConfig,
    tensor_file: Path,
    origins: tuple[ScaleSource | None, ScaleSource],
) -> LoraLayer:
    name = module_name(module_key)
    where = f"{tensor_file}: {name}"
    for key, info in ((a_key, a), (b_key, b)):
        if info.dtype not in FLOAT_DTYPES:
            raise InputError(f"{tensor_file}: tensor {key!r} has dtype {info.dtype}, not float")
        if 0 in info.shape:
            raise InputError(
                f"{tensor_file}: tensor {key!r} is empty (shape {list(info.shape)})",
                hint="this happens when a DeepSpeed ZeRO-3 run saves without gathering "
                "parameters; save again with the full state dict",
            )
        if len(info.shape) < 2:
            raise InputError(
                f"{tensor_file}: tensor {key!r} has shape {list(info.shape)}, expected ≥ 2 dims"
            )
    embedding = "lora_embedding" in a_key
    rank = a.shape[0]
    groups = conv_groups(a.shape, b.shape)  # PEFT's grouped-conv lora_B: (out, r/G, 1, …)
    if groups == 1 and (b.shape[1] != rank or any(d != 1 for d in b.shape[2:])):
        raise InputError(
            f"{where}: rank mismatch: A {a_key!r} has shape {list(a.shape)} but B {b_key!r} "
            f"has shape {list(b.shape)}",
            hint="B must be (out, r) when A is (r, in)",
        )
    out_features, in_features = b.shape[0], math.prod(a.shape[1:])
    weight_shape: tuple[int, ...]
    if embedding:
        kind, weight_shape = LayerKind.EMBEDDING, (in_features, out_features)
    elif len(a.shape) > 2:
        kind, weight_shape = LayerKind.CONV, (out_features, *a.shape[1:])
    else:
        kind, weight_shape = LayerKind.LINEAR, (out_features, in_features)
    alpha = match_pattern(config.alpha_pattern, name)
    source = origins[0] or "assumed"
    if alpha is None:
        alpha, source = config.lora_alpha, origins[1]
    scale = 1.0 if alpha is None else lora_scale(alpha=alpha, rank=rank, rslora=config.use_rslora)
    dora = any("lora_magnitude_vector" in k for k in extras)
    layer = LoraLayer(
        name=name,
        kind=kind,
        a_key=a_key,
        b_key=b_key,
        a_shape=a.shape,
        b_shape=b.shape,
        out_features=out_features,
        in_features=in_features,
        rank=rank,
        alpha=alpha,
        scale=scale,
        dtype=a.dtype if a.dtype == b.dtype else f"{b.dtype}/{a.dtype}",
        weight_shape=weight_shape,
        extra_keys=extras,
        dora=dora,
        scale_source=source if alpha is not None else "assumed",
    )
    return grouped_layer(layer, groups=groups) if groups > 1 else layer


def _check_ranks(layers: list[LoraLayer], *, config: PeftConfig, where: str) -> None:
    for layer in layers:
        expected = match_pattern(config.rank_pattern, layer.name) or config.r
        if expected is not None and expected != layer.rank:
            raise InputError(
                f"{where}: layer {layer.name!r} has rank {layer.rank} in its tensors but the "
                f"config gives r = {expected}",
                hint="the config does not belong to these weights; use the matching "
                "adapter_config.json",
            )
