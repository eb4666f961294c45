"""Run ``compare``: match the layers of two adapters, compare each pair, build the report.

Layers are matched by name; names that match nowhere are tried again after
:func:`normalise_name` (so a kohya file and a diffusers or PEFT file of the same model pair
up), when that pairs them one to one. Each matched pair is loaded, upcast to float64 and
compared by :func:`lora_audit.linalg.subspaces.compare_factors`, one layer at a time on the CPU:
the work is ``O((in + out)·(r_A + r_B)²)`` per layer and nothing of size ``out × in`` is
formed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.commands.adapter_info import TOOL, adapter_info
from lora_audit.engine.batches import Progress, Warn
from lora_audit.errors import InputError
from lora_audit.linalg.spectral import Float64Array
from lora_audit.linalg.subspaces import compare_factors
from lora_audit.report import CompareReport, CompareSummary, LayerComparison, ShapeMismatch

#: How many layers the summary names as the most different.
MOST_DIFFERENT = 5

_PREFIXES = (
    ("base_model_model_", ""),
    ("lora_unet_", "unet_"),
    ("lora_te1_", "text_encoder_"),
    ("lora_te2_", "text_encoder_2_"),
    ("lora_te_", "text_encoder_"),
    ("lora_transformer_", "transformer_"),
)


def normalise_name(name: str) -> str:
    """A layer name in a form shared across formats, for matching.

    ``unet.down_blocks.0.attn1.to_q`` and kohya's ``lora_unet_down_blocks_0_attn1_to_q`` both
    become ``unet_down_blocks_0_attn1_to_q``: lower case, ``.`` → ``_``, diffusers'
    ``.processor.`` dropped, kohya's prefixes (``lora_unet_``, ``lora_te_``, ``lora_te1_``,
    ``lora_te2_``) mapped to the module names (``unet_``, ``text_encoder_``, …).
    """
    key = name.lower().replace(".processor.", ".").replace(".", "_")
    for old, new in _PREFIXES:
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    return key


@dataclass(frozen=True, kw_only=True)
class Matching:
    """Which layers of A pair with which of B."""

    pairs: tuple[tuple[LoraLayer, LoraLayer], ...]
    only_in_a: tuple[str, ...]
    only_in_b: tuple[str, ...]


def pair_layers(layers_a: Sequence[LoraLayer], layers_b: Sequence[LoraLayer]) -> Matching:
    """Pair layers by exact name, then by :func:`normalise_name` where that is one to one.

    Pairs come in A's order.
    """
    by_name_b = {layer.name: layer for layer in layers_b}
    paired: dict[str, LoraLayer] = {}
    for layer in layers_a:
        if layer.name in by_name_b:
            paired[layer.name] = by_name_b[layer.name]
    taken = {b.name for b in paired.values()}
    rest_a = [layer for layer in layers_a if layer.name not in paired]
    rest_b = [layer for layer in layers_b if layer.name not in taken]
    keys_a: dict[str, list[LoraLayer]] = {}
    keys_b: dict[str, list[LoraLayer]] = {}
    for layer in rest_a:
        keys_a.setdefault(normalise_name(layer.name), []).append(layer)
    for layer in rest_b:
        keys_b.setdefault(normalise_name(layer.name), []).append(layer)
    for key, found_a in keys_a.items():
        found_b = keys_b.get(key, [])
        if len(found_a) == 1 and len(found_b) == 1:
            paired[found_a[0].name] = found_b[0]
            taken.add(found_b[0].name)
    pairs = tuple((layer, paired[layer.name]) for layer in layers_a if layer.name in paired)
    return Matching(
        pairs=pairs,
        only_in_a=tuple(layer.name for layer in layers_a if layer.name not in paired),
        only_in_b=tuple(layer.name for layer in layers_b if layer.name not in taken),
    )


def compare_adapters(
    adapter_a: Adapter,
    adapter_b: Adapter,
    *,
    top_k: int,
    progress: Progress | None = None,
    warn: Warn | None = None,
) -> CompareReport:
    """Compare every layer the two adapters share and build the report.

    Parameters
    ----------
    adapter_a, adapter_b
        The reference (A: relative differences are taken against it) and the other.
    top_k
        At most this many leading singular directions per layer are compared (≥ 1).
    """
    warnings = [*adapter_a.warnings, *adapter_b.warnings]
    matching = pair_layers(adapter_a.layers, adapter_b.layers)
    if not matching.pairs and adapter_a.layers and adapter_b.layers:
        raise InputError(
            f"{adapter_a.path} and {adapter_b.path}: no layer in common — different base "
            f"models? ({len(adapter_a.layers)} and {len(adapter_b.layers)} layers, none of "
            f"the same name, e.g. {adapter_a.layers[0].name!r} and "
            f"{adapter_b.layers[0].name!r})",
            hint="compare two adapters of one base model",
        )
    compared: list[LayerComparison] = []
    mismatched: list[ShapeMismatch] = []
    inner_total = 0.0
    for layer_a, layer_b in matching.pairs:
        name_b = layer_b.name if layer_b.name != layer_a.name else None
        shape_a = (layer_a.out_features, layer_a.in_features)
        shape_b = (layer_b.out_features, layer_b.in_features)
        if shape_a != shape_b:
            mismatched.append(
                ShapeMismatch(name=layer_a.name, name_b=name_b, shape_a=shape_a, shape_b=shape_b)
            )
            if progress is not None:
                progress(1)
            continue
        b_a, a_a = _factors(adapter_a, layer_a)
        b_b, a_b = _factors(adapter_b, layer_b)
        m = compare_factors(
            b_a, a_a, b_b, a_b, scale_a=layer_a.scale, scale_b=layer_b.scale, top_k=top_k
        )
        inner_total += m.inner_product
        compared.append(
            LayerComparison(
                name=layer_a.name,
                name_b=name_b,
                shape=shape_a,
                rank_a=layer_a.rank,
                rank_b=layer_b.rank,
                norm_a=m.norm_a,
                norm_b=m.norm_b,
                difference_norm=m.difference_norm,
                difference_spectral_norm=m.difference_spectral_norm,
                relative_difference=m.relative_difference,
                cosine=m.cosine,
                k=m.k,
                left_angles=tuple(math.degrees(t) for t in m.left_angles),
                right_angles=tuple(math.degrees(t) for t in m.right_angles),
                left_overlap=m.left_overlap,
                right_overlap=m.right_overlap,
            )
        )
        if progress is not None:
            progress(1)
    if mismatched:
        message = (
            f"{len(mismatched)} layer(s) differ in shape and were not compared: "
            + ", ".join(m.name for m in mismatched[:5])
            + (" …" if len(mismatched) > 5 else "")
        )
        warnings.append(message)
        if warn is not None:
            warn(message)
    if not matching.pairs:
        message = "the two adapters share no layer (by name); nothing was compared"
        warnings.append(message)
        if warn is not None:
            warn(message)
    return CompareReport(
        tool=TOOL,
        adapter_a=adapter_info(adapter_a),
        adapter_b=adapter_info(adapter_b),
        top_k=top_k,
        layers=tuple(compared),
        mismatched=tuple(mismatched),
        summary=_summary(compared, matching, inner_total=inner_total),
        warnings=tuple(warnings),
    )


def _factors(adapter: Adapter, layer: LoraLayer) -> tuple[Float64Array, Float64Array]:
    """``(B, A)`` of one layer, float64, checked for NaN and Inf."""
    import numpy as np

    b, a = adapter.load_factors(layer)
    for key, factor in ((layer.b_key, b), (layer.a_key, a)):
        if not np.isfinite(factor).all():
            raise InputError(
                f"{adapter.tensor_file}: tensor {key!r} of layer {layer.name!r} contains NaN "
                "or Inf",
                hint="the training run diverged or the file is corrupt; use an earlier checkpoint",
            )
    return b, a


def _summary(
    layers: Sequence[LayerComparison], matching: Matching, *, inner_total: float
) -> CompareSummary:
    total_a = sum(layer.norm_a**2 for layer in layers)
    total_b = sum(layer.norm_b**2 for layer in layers)
    total_d = sum(layer.difference_norm**2 for layer in layers)
    left = [layer.left_overlap for layer in layers if layer.left_overlap is not None]
    right = [layer.right_overlap for layer in layers if layer.right_overlap is not None]
    ranked = sorted(
        (layer for layer in layers if layer.relative_difference is not None),
        key=lambda layer: (-(layer.relative_difference or 0.0), layer.name),
    )
    cosine = (
        max(-1.0, min(1.0, inner_total / math.sqrt(total_a * total_b)))
        if total_a > 0 and total_b > 0
        else None
    )
    return CompareSummary(
        matched=len(matching.pairs),
        only_in_a=matching.only_in_a,
        only_in_b=matching.only_in_b,
        relative_difference=math.sqrt(total_d / total_a) if total_a > 0 else None,
        cosine=cosine,
        mean_left_overlap=sum(left) / len(left) if left else None,
        mean_right_overlap=sum(right) / len(right) if right else None,
        most_different=tuple(layer.name for layer in ranked[:MOST_DIFFERENT]),
        compared=len(layers),
    )
