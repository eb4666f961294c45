"""One scale for every layer of a PEFT output, and how PEFT, vLLM and llama.cpp read it.

PEFT scales each layer by ``alpha_ℓ / r_ℓ`` (``rank_pattern``, ``alpha_pattern``, rsLoRA's
``√r``). vLLM reads one ``lora_alpha / r`` (or ``/ √r``) from the config for every layer,
drops both patterns and takes each layer's rank from its tensors' shapes
(``vllm/lora/peft_helper.py``, ``PEFTHelper.__post_init__``); it refuses ``modules_to_save``
and DoRA. llama.cpp's ``convert_lora_to_gguf.py`` keeps only ``lora_alpha`` and stops at any
tensor that is not a LoRA factor (or a norm); its runtime scales each layer by
``lora_alpha / rank of that layer's tensors`` (``src/llama-adapter.h``,
``llama_adapter_lora_weight::get_scale``).

So the output gets one scale ``s``: each rewritten layer's factors hold ``ΔW / s`` (split
between ``B`` and ``A`` as :func:`~lora_audit.linalg.truncation.split_scale` does), ``s`` is
the scale most kept layers already have (they stay bit for bit), and a kept layer at another
scale is rescaled. Then ``lora_alpha / r = s`` for PEFT and vLLM alike; llama.cpp agrees
only where every layer has one rank, which ``--uniform-rank`` gives by zero-padding (exact).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.errors import UsageError
from lora_audit.formats.peft_serving import padded, stored_layer
from lora_audit.formats.writer import NewLayer, new_layer, stored_dtypes
from lora_audit.linalg.truncation import split_scale
from lora_audit.report.serving import ServerCheck, Serving

if TYPE_CHECKING:
    from lora_audit.linalg.spectral import Float64Array

_Report = TypeVar("_Report", bound=Any)

#: The option that makes every server agree.
UNIFORM_FLAG = "--uniform-rank"
VLLM_RULE = (
    "lora_alpha / r from adapter_config.json for every layer (rank_pattern and alpha_pattern "
    "are not read; each layer's rank is its tensors' shape)"
)
LLAMA_RULE = (
    "convert_lora_to_gguf.py keeps only lora_alpha; each layer is scaled by "
    "lora_alpha / that layer's own rank"
)
PEFT_RULE = "alpha / r per layer (rank_pattern, alpha_pattern)"


def check_uniform(adapter: Adapter, *, uniform_rank: bool) -> None:
    """Refuse ``--uniform-rank`` for an output that is not a PEFT adapter.

    Raises
    ------
    UsageError
        Naming the format.
    """
    if uniform_rank and adapter.format != "peft":
        raise UsageError(
            f"{UNIFORM_FLAG} writes PEFT adapters (what vLLM and llama.cpp load); this output "
            f"is a {adapter.format} adapter",
            hint=f"leave out {UNIFORM_FLAG}",
        )


def global_scale(adapter: Adapter, rewritten: Collection[str]) -> float:
    """The one scale of the output: the most common among the layers kept as they are (so
    they stay bit for bit), else 1 (a rewritten layer's factors can hold any scale)."""
    if adapter.format != "peft":
        return 1.0
    kept = [x.scale for x in adapter.layers if x.name not in rewritten]
    common = [s for s, _ in Counter(kept).most_common() if math.isfinite(s) and s != 0]
    return common[0] if common else 1.0


def fold(scale: float) -> tuple[float, float]:
    """Factors for ``B`` and ``A`` that turn ``ΔW_k = B·A`` into factors at ``scale``."""
    return split_scale(1.0 / scale)


def scaled_store(adapter: Adapter, scale: float) -> Callable[..., NewLayer]:
    """A ``finish`` callback for the refactorisation: factors of ``ΔW_k`` stored at ``scale``
    (for ``scale == 1`` the factors are those of ``ΔW_k`` unchanged)."""
    to_b, to_a = fold(scale)

    def store(layer: LoraLayer, b: Float64Array, a: Float64Array) -> NewLayer:
        return new_layer(layer, b=b * to_b, a=a * to_a, dtypes=stored_dtypes(adapter, layer))

    return store


def settle_kept(
    adapter: Adapter,
    new_layers: Mapping[str, NewLayer],
    *,
    scale: float,
    uniform_rank: bool,
) -> dict[str, NewLayer]:
    """Every layer of a PEFT output at ``scale``, and with ``uniform_rank`` at one rank.

    A kept layer at another scale is rewritten at full rank with ``layer.scale / scale``
    folded into its factors (rounded to their stored dtype); with ``uniform_rank`` every layer
    is zero-padded to the largest rank (exact).
    """
    out = dict(new_layers)
    if adapter.format != "peft":
        return out
    for layer in adapter.layers:
        if layer.name in out:
            continue
        if layer.scale != scale:
            b, a = adapter.load_factors(layer)
            to_b, to_a = split_scale(layer.scale / scale)
            dtypes = stored_dtypes(adapter, layer)
            out[layer.name] = new_layer(layer, b=b * to_b, a=a * to_a, dtypes=dtypes)
        elif uniform_rank:
            out[layer.name] = stored_layer(adapter, layer)
    if uniform_rank and out:
        top = max(new.rank for new in out.values())
        out = {name: padded(new, top) for name, new in out.items()}
    return out


def serving(
    adapter: Adapter,
    ranks: Mapping[str, int],
    *,
    rewritten: Collection[str],
    scale: float,
    uniform_rank: bool,
    extras_fix: str | None = None,
) -> Serving | None:
    """How PEFT, vLLM and llama.cpp read the output (``None`` when it is not PEFT).

    Parameters
    ----------
    adapter
        What is written: its config, layers and extra tensors are the output's.
    ranks
        Every layer's rank in the output, before ``uniform_rank`` pads them to the largest.
    rewritten
        The layers written anew; any other layer at another scale than ``scale`` is rescaled
        (:func:`settle_kept`).
    extras_fix
        The option that leaves out ``modules_to_save`` tensors, where the command has one.
    """
    if adapter.format != "peft" or not ranks:
        return None
    rescaled_layers = sum(x.name not in rewritten and x.scale != scale for x in adapter.layers)
    if uniform_rank:
        ranks = dict.fromkeys(ranks, max(ranks.values()))
    distinct = tuple(sorted(set(ranks.values())))
    top = Counter(ranks.values()).most_common(1)[0][0]
    off = sum(k != top for k in ranks.values())
    dora = bool(adapter.config.get("use_dora")) or any(x.dora for x in adapter.layers)
    saved = adapter.config.get("modules_to_save") or ()
    stops = converter_stops(adapter)
    checks = [
        ServerCheck(
            server="peft",
            verdict="exact",
            rule=PEFT_RULE,
            detail=f"every layer at scale {scale:.6g}",
        ),
        _vllm(scale=scale, top=top, distinct=distinct, dora=dora, saved=saved, fix=extras_fix),
        _llama(scale=scale, top=top, off=off, count=len(ranks), stops=stops, fix=extras_fix),
    ]
    return Serving(
        scale=scale,
        ranks=distinct,
        uniform_rank=uniform_rank,
        rescaled_layers=rescaled_layers,
        checks=tuple(checks),
    )


def converter_stops(adapter: Adapter) -> list[str]:
    """The tensors of ``adapter`` at which llama.cpp's ``convert_lora_to_gguf.py`` stops:
    every one that is not a LoRA factor, a base layer or a norm."""
    extras = [*adapter.passthrough_keys, *(k for x in adapter.layers for k in x.extra_keys)]
    return [k for k in extras if not _converter_keeps(k)]


def _converter_keeps(key: str) -> bool:
    """Whether llama.cpp's convert_lora_to_gguf.py accepts a tensor that is not a factor."""
    return ".base_layer.weight" in key or "_layernorm" in key or ".norm" in key


def _vllm(
    *,
    scale: float,
    top: int,
    distinct: tuple[int, ...],
    dora: bool,
    saved: Collection[str],
    fix: str | None,
) -> ServerCheck:
    refused = [
        *([f"modules_to_save ({', '.join(map(str, saved))})"] if saved else []),
        *(["DoRA"] if dora else []),
    ]
    if refused:
        return ServerCheck(
            server="vllm",
            verdict="refused",
            rule=VLLM_RULE,
            detail=f"vLLM refuses adapters with {' and '.join(refused)}; the LoRA layers "
            f"themselves read at scale lora_alpha/r = {scale:.6g}, as in PEFT",
            fix=fix if saved and not dora else None,
        )
    ranks = "one rank" if len(distinct) == 1 else f"ranks {distinct[0]}–{distinct[-1]}"
    return ServerCheck(
        server="vllm",
        verdict="exact",
        rule=VLLM_RULE,
        detail=f"every layer at scale {scale:.6g} = lora_alpha {scale * top:.6g} / r {top}; "
        f"{ranks} (serve with --max-lora-rank ≥ {distinct[-1]})",
    )


def _llama(
    *, scale: float, top: int, off: int, count: int, stops: list[str], fix: str | None
) -> ServerCheck:
    uniform = f"{UNIFORM_FLAG} (every layer zero-padded to one rank: exact)"
    ranks_differ = (
        f"{off} of {count} layers are not at rank {top}, and llama.cpp scales each by "
        f"lora_alpha / its own rank instead of {scale:.6g}"
    )
    if stops:
        more = f" (and {len(stops) - 1} more)" if len(stops) > 1 else ""
        detail = (
            f"convert_lora_to_gguf.py stops at tensors that are not LoRA factors: "
            f"{stops[0]!r}{more}"
        )
        return ServerCheck(
            server="llama.cpp",
            verdict="refused",
            rule=LLAMA_RULE,
            detail=detail + (f"; besides, {ranks_differ}" if off else ""),
            fix=" and ".join(f for f in (fix, uniform if off else None) if f) or None,
        )
    if off:
        return ServerCheck(
            server="llama.cpp", verdict="differs", rule=LLAMA_RULE, detail=ranks_differ, fix=uniform
        )
    return ServerCheck(
        server="llama.cpp",
        verdict="exact",
        rule=LLAMA_RULE,
        detail=f"every layer at rank {top}: lora_alpha {scale * top:.6g} / {top} = {scale:.6g}",
    )


def with_padding(report: _Report, *, uniform_rank: bool) -> _Report:
    """A compress or merge report whose ``params_after`` count the zero-padded parameters
    that ``uniform_rank`` writes (each layer's own ``new_rank`` stays what it keeps)."""
    if not uniform_rank or not report.layers:
        return report
    top = max(x.new_rank for x in report.layers)
    layers = tuple(
        replace(x, params_after=x.params_after // x.new_rank * top) if x.new_rank else x
        for x in report.layers
    )
    before = sum(x.params for x in layers)
    after = sum(x.params_after for x in layers)
    summary = replace(
        report.summary,
        params_after=after,
        saved_fraction=1 - after / before if before else 0.0,
    )
    return replace(report, layers=layers, summary=summary)
