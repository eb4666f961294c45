"""Single-file Stable Diffusion adapters: kohya / sd-scripts, LyCORIS, ComfyUI-style, diffusers.

Per module ``<m>``:

* kohya LoRA / LoCon: ``<m>.lora_down.weight`` (r, in[, kh, kw]), ``<m>.lora_up.weight``
  (out, r[, 1, 1]), optional ``<m>.lora_mid.weight`` (r, r, kh, kw) Tucker core (LoCon),
  optional ``<m>.alpha`` (0-d). Scale ``alpha / r``; no alpha means scale 1 (assumed, with a
  warning: sd-scripts, ComfyUI and diffusers all load such a module at ``alpha = r``).
* ComfyUI-style (OneTrainer, SimpleTuner's ComfyUI export, DiffSynth / Wan, Qwen-Image,
  Z-Image, HunyuanVideo): ``<m>.lora_A.weight`` (r, in) and ``<m>.lora_B.weight`` (out, r)
  (or ``.lora_A.default.weight``) beside a per-module ``<m>.alpha``: scale ``alpha / r`` per
  module, as ComfyUI's ``LoRAAdapter`` and diffusers' ``lora_conversion_utils`` apply it.
  Such a file is read here, not as PEFT (:func:`has_module_alphas`); format ``comfyui``.
* LyCORIS LoHa: ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` and optional Tucker
  cores ``hada_t1``/``hada_t2``; scale ``alpha / r`` with ``r = hada_w1_b.shape[0]``.
* LyCORIS LoKr: ``lokr_w1`` or ``lokr_w1_a``/``_b``, ``lokr_w2`` or ``lokr_w2_a``/``_b``,
  optional ``lokr_t2``; scale ``alpha / r`` when a factor is low-rank (``r`` its inner
  dimension), else 1.
* diffusers attention processors: ``<m>.to_q_lora.down.weight`` / ``.up.weight`` (module
  ``<m>.to_q``), ``<m>.lora_linear_layer.down.weight``, ``<m>.lora.down.weight``.

``dora_scale`` tensors are passed through; ``.diff``/``.diff_b`` (full), ``.oft_blocks`` and
other non-low-rank tensors are listed, not audited.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

from lora_audit.adapter import Adapter, LayerKind, LoraLayer, Structure, natural_key
from lora_audit.choices import AdapterFormat
from lora_audit.errors import InputError
from lora_audit.formats.diffusers_metadata import partial_load_warning
from lora_audit.formats.lycoris import Common, alpha_scale, loha, lokr, need
from lora_audit.formats.safetensors_io import (
    FLOAT_DTYPES,
    Header,
    SafetensorsSource,
    TensorInfo,
    read_header,
)

_ROLE = re.compile(
    r"^(?P<module>.+?)\."
    r"(?P<role>lora_down\.weight|lora_up\.weight|lora_mid\.weight|alpha|dora_scale"
    r"|lora_[AB](?:\.default)?\.weight"
    r"|hada_w[12]_[ab]|hada_t[12]|lokr_w[12]|lokr_w[12]_[ab]|lokr_t2)\Z",
    re.DOTALL,  # a module name may hold any character, a line break too: never skip it
)
_DIFFUSERS = re.compile(
    r"^(?P<module>.+?)(?:_lora|\.lora_linear_layer|\.lora)\.(?P<side>down|up)\.weight\Z",
    re.DOTALL,
)
#: ComfyUI-style factor names, read as kohya's down / up.
_PEFT_NAMED = {"lora_A": "lora_down", "lora_B": "lora_up"}
_NOT_LOW_RANK = re.compile(r"\.(diff|diff_b|oft_blocks|oft_diag|on_input|rescale)\Z")

#: ``ss_*`` metadata keys shown in reports.
SHOWN_METADATA = (
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
    "ss_base_model_version",
    "ss_output_name",
    "ss_training_comment",
    "sshs_model_hash",
)


def looks_like_kohya(header: Header) -> bool:
    """True when any key is a kohya, LyCORIS or diffusers-processor factor."""
    return any(_ROLE.match(k) or _DIFFUSERS.match(k) for k in header.tensors)


def has_diffusers_names(header: Header) -> bool:
    """True when a factor has a diffusers attention-processor name (``.lora.down.weight``,
    ``.lora_linear_layer.up.weight``, ``.to_q_lora.down.weight``).

    diffusers' own training path (``convert_state_dict_to_diffusers`` of PEFT's state dict,
    then ``save_lora_weights``) gives such names to attention modules and keeps
    ``lora_A``/``lora_B`` for the others (``conv1``, ``ff.net.*``): the file is read here,
    both spellings as one adapter, as diffusers' loader converts every name to PEFT's.
    """
    return any(_DIFFUSERS.match(k) for k in header.tensors)


def has_module_alphas(header: Header) -> bool:
    """True when a ``lora_A``/``lora_B`` module has a ``.alpha`` tensor beside it.

    Such files (ComfyUI-style) look like PEFT but are not: PEFT never stores an alpha
    tensor, and their loaders scale each module by its own ``alpha / r``.
    """
    factored: set[str] = set()
    alphas: set[str] = set()
    for key in header.tensors:
        if (m := _ROLE.match(key)) and m["role"] != "alpha":
            if m["role"].startswith("lora_A") or m["role"].startswith("lora_B"):
                factored.add(m["module"])
        elif key.endswith(".alpha"):
            alphas.add(key.removesuffix(".alpha"))
    return not factored.isdisjoint(alphas)


def read_kohya(*, path: Path, tensor_file: Path, header: Header | None = None) -> Adapter:
    """Read a kohya / LyCORIS / diffusers single-file adapter.

    Raises
    ------
    InputError
        For half-paired or malformed modules, or a file with no low-rank module at all.
    """
    header = header or read_header(tensor_file)
    source = SafetensorsSource(tensor_file, header)
    modules: dict[str, dict[str, str]] = {}
    passthrough: list[str] = []
    unknown: list[str] = []
    diffusers = False
    comfy = False
    for key in header.tensors:
        if m := _ROLE.match(key):
            role = m["role"].removesuffix(".weight").removesuffix(".default")
            comfy = comfy or role in _PEFT_NAMED
            role = _PEFT_NAMED.get(role, role)
            slot = modules.setdefault(m["module"], {})
            if role in slot:
                raise InputError(
                    f"{tensor_file}: module {m['module']!r} has two {role} tensors "
                    f"({slot[role]!r} and {key!r})",
                    hint="the file mixes two naming schemes for one module; keep one",
                )
            slot[role] = key
        elif m := _DIFFUSERS.match(key):
            diffusers = True
            modules.setdefault(m["module"], {})[f"lora_{m['side']}"] = key
        elif _NOT_LOW_RANK.search(key):
            passthrough.append(key)
        else:
            unknown.append(key)
    warnings: list[str] = []
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        warnings.append(
            f"{tensor_file}: {len(unknown)} key(s) match no known pattern: {shown}{more}"
        )
    layers: list[LoraLayer] = []
    for module, roles in modules.items():
        alpha = _alpha(source, roles.get("alpha"), tensor_file=tensor_file)
        extras = tuple(roles[r] for r in ("alpha", "dora_scale") if r in roles)
        factor_roles = {r: k for r, k in roles.items() if r not in {"alpha", "dora_scale"}}
        if not factor_roles:
            passthrough.extend(extras)
            continue
        layers.append(
            _layer(
                module,
                factor_roles,
                header.tensors,
                alpha=alpha,
                extras=extras,
                dora="dora_scale" in roles,
                tensor_file=tensor_file,
            )
        )
    if not layers:
        raise InputError(
            f"{tensor_file}: no low-rank modules found"
            + (f" ({len(unknown)} unknown keys, e.g. {unknown[0]!r})" if unknown else ""),
            hint="lora-audit reads PEFT, kohya/sd-scripts, LyCORIS (LoCon, LoHa, LoKr) and "
            "diffusers LoRA files",
        )
    passthrough.extend(unknown)
    layers.sort(key=lambda layer: natural_key(layer.name))
    structures = {layer.structure for layer in layers}
    if assumed := [layer.name for layer in layers if layer.scale_source == "assumed"]:
        warnings.append(_assumed_warning(tensor_file, assumed, total=len(layers)))
    if diffusers:
        fmt = AdapterFormat.DIFFUSERS
        if comfy and (partial := partial_load_warning(header, where=str(tensor_file))):
            warnings.append(partial)
    elif comfy:
        fmt = AdapterFormat.COMFYUI
    elif structures - {Structure.LORA} or any(layer.kind is LayerKind.CONV for layer in layers):
        lycoris = structures - {Structure.LORA, Structure.TUCKER}
        fmt = AdapterFormat.LYCORIS if lycoris else AdapterFormat.KOHYA
    else:
        fmt = AdapterFormat.KOHYA
    metadata = dict(header.metadata)
    return Adapter(
        path=path,
        tensor_file=tensor_file,
        format=fmt,
        layers=tuple(layers),
        passthrough_keys=tuple(passthrough),
        config={},
        metadata=metadata,
        base_model=metadata.get("ss_sd_model_name") or metadata.get("ss_base_model_version"),
        warnings=tuple(warnings),
        source=source,
    )


def _assumed_warning(tensor_file: Path, names: list[str], *, total: int) -> str:
    """The warning for modules whose file says nothing about their scale."""
    return (
        f"{tensor_file}: {len(names)} of {total} module(s) store no .alpha (e.g. {names[0]!r}): "
        "scale 1 assumed for them (alpha = rank, as sd-scripts, LyCORIS, ComfyUI and "
        "diffusers load such modules)"
    )


def _alpha(source: SafetensorsSource, key: str | None, *, tensor_file: Path) -> float | None:
    if key is None:
        return None
    info = source.header.tensors[key]
    if math.prod(info.shape) != 1 or info.dtype not in FLOAT_DTYPES | {"I64", "I32"}:
        raise InputError(
            f"{tensor_file}: alpha {key!r} must be one number, not {info.dtype} {list(info.shape)}"
        )
    value = float(source.get(key).reshape(-1)[0].item())
    if not math.isfinite(value):
        raise InputError(f"{tensor_file}: alpha {key!r} is {value}")
    return value


def _layer(
    module: str,
    roles: dict[str, str],
    tensors: Mapping[str, TensorInfo],
    *,
    alpha: float | None,
    extras: tuple[str, ...],
    dora: bool,
    tensor_file: Path,
) -> LoraLayer:
    for key in roles.values():
        info = tensors[key]
        if info.dtype not in FLOAT_DTYPES:
            raise InputError(f"{tensor_file}: tensor {key!r} has dtype {info.dtype}, not float")
        if 0 in info.shape or len(info.shape) < 2:
            raise InputError(f"{tensor_file}: tensor {key!r} has shape {list(info.shape)}")
    shape = {role: tensors[key].shape for role, key in roles.items()}
    common = Common(
        name=module,
        extra_keys=extras,
        dora=dora,
        dtype="/".join(sorted({tensors[k].dtype for k in roles.values()})),
    )
    if any(r.startswith("hada_") for r in roles):
        return loha(roles, shape, alpha=alpha, common=common, tensor_file=tensor_file)
    if any(r.startswith("lokr_") for r in roles):
        return lokr(roles, shape, alpha=alpha, common=common, tensor_file=tensor_file)
    need(roles, "lora_down", "lora_up", module=module, tensor_file=tensor_file)
    down, up = shape["lora_down"], shape["lora_up"]
    rank = down[0]
    if up[1] != rank or any(d != 1 for d in up[2:]):
        raise InputError(
            f"{tensor_file}: {module}: rank mismatch: lora_down {list(down)}, lora_up {list(up)}",
            hint="lora_up must be (out, r[, 1, 1]) when lora_down is (r, in[, kh, kw])",
        )
    out = up[0]
    structure, keys, stored = Structure.LORA, {}, None
    weight_shape: tuple[int, ...] = (out, *down[1:])
    if "lora_mid" in roles:  # LoCon with a Tucker core
        mid = shape["lora_mid"]
        if mid[:2] != (rank, rank) or any(d != 1 for d in down[2:]):
            raise InputError(
                f"{tensor_file}: {module}: lora_mid {list(mid)} does not fit lora_down {list(down)}"
            )
        weight_shape = (out, down[1], *mid[2:])
        structure = Structure.TUCKER
        keys = {"up": roles["lora_up"], "mid": roles["lora_mid"], "down": roles["lora_down"]}
        stored = sum(math.prod(s) for s in (down, up, mid))
    scale, source = alpha_scale(alpha, rank)
    return LoraLayer(
        kind=LayerKind.CONV if len(weight_shape) > 2 else LayerKind.LINEAR,
        a_key=roles["lora_down"],
        b_key=roles["lora_up"],
        a_shape=down,
        b_shape=up,
        out_features=out,
        in_features=math.prod(weight_shape[1:]),
        rank=rank,
        alpha=alpha,
        scale=scale,
        scale_source=source,
        weight_shape=weight_shape,
        structure=structure,
        keys=keys,
        stored_params=stored,
        **common,
    )
