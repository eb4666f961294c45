"""Merges that would mean nothing: inputs with no layer in common, weights that cancel.

* :func:`check_common` refuses inputs that share no layer and no top module (a Llama
  adapter and a BERT adapter): their "merge" is a hybrid no model loads.
* :func:`cancelled_layers` and :func:`refuse_cancelled` find the layers where
  ``Σ wᵢ·ΔWᵢ = 0`` (``merge A A --weights 1,-1``) and refuse a merge that is zero everywhere,
  instead of reporting "energy kept" for the rounding noise left in it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lora_audit.adapter import Adapter, natural_key
from lora_audit.errors import InputError

if TYPE_CHECKING:
    from lora_audit.commands.merge_inputs import MergedSource
    from lora_audit.linalg.spectral import Float64Array


def _root(name: str) -> str:
    """The model's top module a layer sits in: ``model`` for ``model.layers.3.q_proj``,
    ``bert`` for ``bert.encoder.layer.0.attention.self.query``, ``lora`` for every kohya
    name (``lora_unet_…``, ``lora_te_…``: one SD checkpoint)."""
    return re.split(r"[._]", name, maxsplit=1)[0]


def check_common(adapters: Sequence[Adapter]) -> None:
    """Each input shares a layer, or at least the model's top module, with the others.

    Adapters of one model that target different modules (``q_proj`` in one, ``v_proj`` in
    the other; a kohya text-encoder LoRA and a UNet one) merge exactly into their union; a
    Llama adapter (``model.…``) and a BERT adapter (``bert.…``) share no layer and no top
    module, and their "merge" would be a hybrid no model loads.

    Raises
    ------
    InputError
        Naming the input that shares nothing with the others.
    """
    for i, adapter in enumerate(adapters):
        others = [a for j, a in enumerate(adapters) if j != i]
        names = {layer.name for other in others for layer in other.layers}
        if any(layer.name in names for layer in adapter.layers):
            continue
        roots = {_root(name) for name in names}
        if any(_root(layer.name) in roots for layer in adapter.layers):
            continue
        shown = next(iter(sorted(names, key=natural_key)), "")
        mine = adapter.layers[0].name if adapter.layers else ""
        raise InputError(
            f"{adapter.path}: no layer in common — different base models? (it adapts e.g. "
            f"{mine!r}, the other input{'s' if len(others) > 1 else ''} e.g. {shown!r})",
            hint="merge adapters of one base model",
        )


#: A merged layer whose σ₁ is below this fraction of its inputs' size (``bounds``) is zero:
#: the weighted inputs cancel (the audit's accuracy is 1e-6·σ₁, so nothing smaller is real).
CANCEL_RTOL = 1e-6


def cancelled_layers(source: MergedSource, sigmas: Mapping[str, Float64Array]) -> list[str]:
    """The merged layers whose weighted inputs cancel (``Σ wᵢ·ΔWᵢ = 0`` to the audit's
    accuracy), in the order of ``sigmas``."""
    out = []
    for name, sigma in sigmas.items():
        bound = source.bounds.get(name, 0.0)
        top = float(sigma[0]) if sigma.shape[0] else 0.0
        if bound > 0 and top <= CANCEL_RTOL * bound:
            out.append(name)
    return out


def refuse_cancelled(
    cancelled: Sequence[str], *, layer_count: int, weights: Sequence[float]
) -> str | None:
    """Refuse a merge whose inputs cancel in every layer; a warning when some layers cancel.

    A sum that is exactly zero is a no-op adapter: writing it (and reporting "energy kept"
    for the rounding noise left in it) would hide a mistake in ``--weights``.

    Raises
    ------
    InputError
        When every layer cancels; nothing is written.
    """
    if not cancelled:
        return None
    shown = ",".join(f"{w:g}" for w in weights)
    if len(cancelled) == layer_count:
        raise InputError(
            f"the inputs cancel: with --weights {shown}, Σ wᵢ·ΔWᵢ = 0 in all {layer_count} "
            f"layers (σ₁ below {CANCEL_RTOL:g} of the inputs' size), so there is nothing to "
            "merge; nothing was written",
            hint="check --weights (an adapter minus itself is zero)",
        )
    return (
        f"{len(cancelled)} of {layer_count} layer(s) cancel (Σ wᵢ·ΔWᵢ = 0 with --weights "
        f"{shown}), e.g. {cancelled[0]!r}: they hold nothing and their energy figures are "
        "rounding noise"
    )
