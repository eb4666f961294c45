"""LyCORIS LoHa and LoKr modules of a single-file adapter (read by :mod:`.kohya`).

Scales follow LyCORIS' own modules: LoHa ``alpha / r`` with ``r = hada_w1_b.shape[0]``;
LoKr ``alpha / r`` when a factor is low-rank (``r`` its inner dimension), else 1 whatever the
alpha (``scale_source = "fixed"``). A module without ``.alpha`` gets scale 1 (LyCORIS sets
``alpha = r`` then); the caller warns about it (``scale_source = "assumed"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict

from lora_audit.adapter import LayerKind, LoraLayer, ScaleSource, Structure
from lora_audit.errors import InputError


class Common(TypedDict):
    """Fields every module of a single file shares, whatever its structure."""

    name: str
    extra_keys: tuple[str, ...]
    dora: bool
    dtype: str


def need(roles: Mapping[str, str], *names: str, module: str, tensor_file: Path) -> None:
    """Refuse a module that lacks one of the tensors ``names``."""
    missing = [n for n in names if n not in roles]
    if missing:
        have = ", ".join(sorted(roles))
        raise InputError(
            f"{tensor_file}: module {module!r} has {have} but not {', '.join(missing)}",
            hint="the file is incomplete or mixes formats",
        )


def alpha_scale(alpha: float | None, rank: int) -> tuple[float, ScaleSource]:
    """``alpha / rank`` from a module's ``.alpha``; scale 1 (assumed) without one."""
    return (1.0, "assumed") if alpha is None else (alpha / rank, "module_alpha")


def loha(
    roles: dict[str, str],
    shape: dict[str, tuple[int, ...]],
    *,
    alpha: float | None,
    common: Common,
    tensor_file: Path,
) -> LoraLayer:
    """A LoHa module: ``(w1a·w1b) ⊙ (w2a·w2b)``, optional Tucker cores ``hada_t1``/``_t2``."""
    name = common["name"]
    need(
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
        need(roles, "hada_t2", module=name, tensor_file=tensor_file)
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
    scale, source = alpha_scale(alpha, r1)
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
        scale=scale,
        scale_source=source,
        weight_shape=weight_shape,
        structure=Structure.LOHA,
        keys=keys,
        stored_params=sum(math.prod(shape[r]) for r in roles),
        network_dim=r1,
        **common,
    )


def lokr(
    roles: dict[str, str],
    shape: dict[str, tuple[int, ...]],
    *,
    alpha: float | None,
    common: Common,
    tensor_file: Path,
) -> LoraLayer:
    """A LoKr module: ``kron(W1, W2)``, each factor full or low-rank, optional ``lokr_t2``."""
    name = common["name"]
    if "lokr_w1" in roles:
        a1, b1 = shape["lokr_w1"][0], math.prod(shape["lokr_w1"][1:])
        low_rank_dim = None
    else:
        need(roles, "lokr_w1_a", "lokr_w1_b", module=name, tensor_file=tensor_file)
        a1, b1 = shape["lokr_w1_a"][0], shape["lokr_w1_b"][1]
        low_rank_dim = shape["lokr_w1_b"][0]
    keys = {r.removeprefix("lokr_"): k for r, k in roles.items()}
    if "lokr_w2" in roles:
        w2 = shape["lokr_w2"]
        o2, i2, spatial = w2[0], w2[1], w2[2:]
        r2 = None
    else:
        need(roles, "lokr_w2_a", "lokr_w2_b", module=name, tensor_file=tensor_file)
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
    source: ScaleSource
    if low_rank_dim is None:  # both factors full: LyCORIS ignores alpha
        scale, source = 1.0, "fixed"
    else:
        scale, source = alpha_scale(alpha, low_rank_dim)
    weight_shape = (out, b1 * i2, *spatial)
    first = next(iter(roles))
    return LoraLayer(
        kind=LayerKind.CONV if spatial else LayerKind.LINEAR,
        a_key=roles[first],
        b_key=roles[first],
        a_shape=shape[first],
        b_shape=shape[first],
        out_features=out,
        in_features=inp,
        rank=rank,
        alpha=alpha,
        scale=scale,
        scale_source=source,
        weight_shape=weight_shape,
        structure=structure,
        keys=keys,
        stored_params=sum(math.prod(shape[r]) for r in roles),
        network_dim=low_rank_dim,
        **common,
    )
