"""Single-file Stable Diffusion adapters: kohya / sd-scripts, LyCORIS and older diffusers.

Per module ``<m>``:

* kohya LoRA / LoCon: ``<m>.lora_down.weight`` (r, in[, kh, kw]), ``<m>.lora_up.weight``
  (out, r[, 1, 1]), optional ``<m>.lora_mid.weight`` (r, r, kh, kw) Tucker core (LoCon),
  optional ``<m>.alpha`` (0-d). Scale ``alpha / r``; no alpha means scale 1.
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
from typing import TypedDict

from lora_audit.adapter import Adapter, LayerKind, LoraLayer, Structure, natural_key
from lora_audit.errors import InputError
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
    r"|hada_w[12]_[ab]|hada_t[12]|lokr_w[12]|lokr_w[12]_[ab]|lokr_t2)\Z",
    re.DOTALL,  # a module name may hold any character, a line break too: never skip it
)
_DIFFUSERS = re.compile(
    r"^(?P<module>.+?)(?:_lora|\.lora_linear_layer|\.lora)\.(?P<side>down|up)\.weight\Z",
    re.DOTALL,
)
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


class _Common(TypedDict):
    name: str
    extra_keys: tuple[str, ...]
    dora: bool
    dtype: str


def looks_like_kohya(header: Header) -> bool:
    """True when any key is a kohya, LyCORIS or diffusers-processor factor."""
    return any(_ROLE.match(k) or _DIFFUSERS.match(k) for k in header.tensors)


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
    for key in header.tensors:
        if m := _ROLE.match(key):
            role = m["role"].removesuffix(".weight")
            modules.setdefault(m["module"], {})[role] = key
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
    if diffusers:
        fmt = "diffusers"
    elif structures - {Structure.LORA} or any(layer.kind is LayerKind.CONV for layer in layers):
        fmt = "lycoris" if structures - {Structure.LORA, Structure.TUCKER} else "kohya"
    else:
        fmt = "kohya"
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


def _need(roles: Mapping[str, str], *names: str, module: str, tensor_file: Path) -> None:
    missing = [n for n in names if n not in roles]
    if missing:
        have = ", ".join(sorted(roles))
        raise InputError(
            f"{tensor_file}: module {module!r} has {have} but not {', '.join(missing)}",
            hint="the file is incomplete or mixes formats",
        )


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
    common = _Common(
        name=module,
        extra_keys=extras,
        dora=dora,
        dtype="/".join(sorted({tensors[k].dtype for k in roles.values()})),
    )
    if any(r.startswith("hada_") for r in roles):
        return _loha(roles, shape, alpha=alpha, common=common, tensor_file=tensor_file)
    if any(r.startswith("lokr_") for r in roles):
        return _lokr(roles, shape, alpha=alpha, common=common, tensor_file=tensor_file)
    _need(roles, "lora_down", "lora_up", module=module, tensor_file=tensor_file)
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
        scale=_scale(alpha, rank),
        weight_shape=weight_shape,
        structure=structure,
        keys=keys,
        stored_params=stored,
        **common,
    )


def _scale(alpha: float | None, rank: int) -> float:
    return 1.0 if alpha is None else alpha / rank


def _loha(
    roles: dict[str, str],
    shape: dict[str, tuple[int, ...]],
    *,
    alpha: float | None,
    common: _Common,
    tensor_file: Path,
) -> LoraLayer:
    name = common["name"]
    _need(
        roles,
        "hada_w1_a",
        "hada_w1_b",
        "hada_w2_a",
        "hada_w2_b",
        module=name,
        tensor_file=tensor_file,
    )
    tucker = "hada_t1" in roles
    w1a, w1b, w2a, w2b = (shape[f"hada_{r}"] for r in ("w1_a", "w1_b", "w2_a", "w2_b"))
    if tucker:
        _need(roles, "hada_t2", module=name, tensor_file=tensor_file)
        t1 = shape["hada_t1"]
        r1, r2 = w1a[0], w2a[0]
        out, inp = w1a[1], w1b[1] * math.prod(t1[2:])
        weight_shape: tuple[int, ...] = (out, w1b[1], *t1[2:])
    else:
        r1, r2 = w1a[1], w2a[1]
        out, inp = w1a[0], math.prod(w1b[1:])
        weight_shape = (out, *w1b[1:]) if len(w1b) > 2 else (out, inp)
    if w1b[0] != r1 or w2b[0] != r2 or (w2a[0] if not tucker else w2a[1]) != out:
        raise InputError(
            f"{tensor_file}: {name}: LoHa factors do not fit: w1_a {list(w1a)}, w1_b {list(w1b)}, "
            f"w2_a {list(w2a)}, w2_b {list(w2b)}"
        )
    keys = {f"w{i}_{s}": roles[f"hada_w{i}_{s}"] for i in (1, 2) for s in ("a", "b")}
    if tucker:
        keys |= {"t1": roles["hada_t1"], "t2": roles["hada_t2"]}
    return LoraLayer(
        kind=LayerKind.CONV if len(weight_shape) > 2 else LayerKind.LINEAR,
        a_key=roles["hada_w1_b"],
        b_key=roles["hada_w1_a"],
        a_shape=w1b,
        b_shape=w1a,
        out_features=out,
        in_features=inp,
        rank=r1 * r2,
        alpha=alpha,
        scale=_scale(alpha, r1),
        weight_shape=weight_shape,
        structure=Structure.LOHA,
        keys=keys,
        stored_params=sum(math.prod(shape[r]) for r in roles),
        network_dim=r1,
        **common,
    )


def _lokr(
    roles: dict[str, str],
    shape: dict[str, tuple[int, ...]],
    *,
    alpha: float | None,
    common: _Common,
    tensor_file: Path,
) -> LoraLayer:
    name = common["name"]
    if "lokr_w1" in roles:
        a1, b1 = shape["lokr_w1"][0], math.prod(shape["lokr_w1"][1:])
        low_rank_dim = None
    else:
        _need(roles, "lokr_w1_a", "lokr_w1_b", module=name, tensor_file=tensor_file)
        a1, b1 = shape["lokr_w1_a"][0], shape["lokr_w1_b"][1]
        low_rank_dim = shape["lokr_w1_b"][0]
    keys = {r.removeprefix("lokr_"): k for r, k in roles.items()}
    if "lokr_w2" in roles:
        w2 = shape["lokr_w2"]
        o2, i2, spatial = w2[0], w2[1], w2[2:]
        r2 = None
    else:
        _need(roles, "lokr_w2_a", "lokr_w2_b", module=name, tensor_file=tensor_file)
        w2a, w2b = shape["lokr_w2_a"], shape["lokr_w2_b"]
        if "lokr_t2" in roles:
            t2 = shape["lokr_t2"]
            o2, i2, spatial, r2 = w2a[1], w2b[1], t2[2:], w2a[0]
        else:
            o2, i2, spatial, r2 = w2a[0], w2b[1], w2b[2:], w2a[1]
        low_rank_dim = low_rank_dim or r2
    out, inp = a1 * o2, b1 * i2 * math.prod(spatial)
    thin = r2 is not None and "lokr_t2" not in roles
    structure = Structure.LOKR if thin else Structure.KRON
    rank = b1 * r2 if thin and r2 is not None else min(a1, b1) * min(o2, i2 * math.prod(spatial))
    scale = 1.0 if alpha is None or low_rank_dim is None else alpha / low_rank_dim
    weight_shape = (out, b1 * i2, *spatial)
    return LoraLayer(
        kind=LayerKind.CONV if spatial else LayerKind.LINEAR,
        a_key=next(iter(roles.values())),
        b_key=next(iter(roles.values())),
        a_shape=shape[next(iter(roles))],
        b_shape=shape[next(iter(roles))],
        out_features=out,
        in_features=inp,
        rank=rank,
        alpha=alpha,
        scale=scale,
        weight_shape=weight_shape,
        structure=structure,
        keys=keys,
        stored_params=sum(math.prod(shape[r]) for r in roles),
        network_dim=low_rank_dim,
        **common,
    )
