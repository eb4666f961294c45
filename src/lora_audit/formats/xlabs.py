"""XLabs Flux LoRAs (x-flux ``train_flux_lora_deepspeed.py``): attention-processor factors.

Keys (optionally under ``diffusion_model.``), each ``.down.weight`` (r, in) / ``.up.weight``
(out, r) of an x-flux ``LoRALinearLayer``:

* ``double_blocks.N.processor.qkv_lora1`` / ``proj_lora1`` — the image stream's
  ``img_attn.qkv`` / ``img_attn.proj``; ``qkv_lora2`` / ``proj_lora2`` — the text stream's;
* ``single_blocks.N.processor.qkv_lora`` — the q/k/v rows of ``linear1``; ``proj_lora`` —
  ``linear2``.

ΔW = up·down: x-flux builds every processor with ``network_alpha=None`` (the layer then
skips its ``alpha / rank`` factor), and no alpha is stored, so the scale is fixed at 1
(``lora_weight``, x-flux's strength setting at load time, is the user's, not the file's).
diffusers' ``_convert_xlabs_flux_lora_to_diffusers`` reads the same numbers (it splits each
qkv ``up`` into q, k and v that share ``down``). Layer names are the modules' paths in
x-flux's model. x-flux loads every processor at one rank (that of the first ``.down``), so
``compress`` writes such files only with one rank for every layer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from lora_audit.adapter import Adapter, LayerKind, LoraLayer, natural_key
from lora_audit.choices import AdapterFormat
from lora_audit.errors import InputError
from lora_audit.formats.one_rank import require_one_rank
from lora_audit.formats.safetensors_io import FLOAT_DTYPES, Header, SafetensorsSource

_KEY = re.compile(
    r"^(?P<module>(?:diffusion_model\.)?(?:double_blocks\.\d+\.processor\.(?:qkv|proj)_lora[12]"
    r"|single_blocks\.\d+\.processor\.(?:qkv|proj)_lora))\.(?P<side>down|up)\.weight$"
)

__all__ = ["check_one_rank", "looks_like_xlabs", "read_xlabs"]


def looks_like_xlabs(header: Header) -> bool:
    """True when any key is an x-flux processor LoRA factor."""
    return any(_KEY.match(k) for k in header.tensors)


def read_xlabs(*, path: Path, tensor_file: Path, header: Header) -> Adapter:
    """Read an XLabs Flux LoRA file.

    Raises
    ------
    InputError
        For a key that is not an x-flux processor factor (nothing is skipped silently), a
        half-paired module, or factors whose shapes do not fit.
    """
    modules: dict[str, dict[str, str]] = {}
    unknown = []
    for key in header.tensors:
        if m := _KEY.match(key):
            modules.setdefault(m["module"], {})[m["side"]] = key
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5])
        raise InputError(
            f"{tensor_file}: XLabs (x-flux) Flux LoRA with {len(unknown)} other key(s): {shown}",
            hint="lora-audit reads x-flux files whose keys are all "
            "'*_blocks.N.processor.{qkv,proj}_lora*.{down,up}.weight'; the file mixes formats",
        )
    layers = [
        _layer(name, sides, header, tensor_file=tensor_file) for name, sides in modules.items()
    ]
    layers.sort(key=lambda layer: natural_key(layer.name))
    return Adapter(
        path=path,
        tensor_file=tensor_file,
        format=AdapterFormat.XLABS,
        layers=tuple(layers),
        metadata=dict(header.metadata),
        source=SafetensorsSource(tensor_file, header),
    )


def _layer(name: str, sides: dict[str, str], header: Header, *, tensor_file: Path) -> LoraLayer:
    missing = {"down", "up"} - set(sides)
    if missing:
        raise InputError(
            f"{tensor_file}: XLabs module {name!r} has no .{missing.pop()}.weight",
            hint="the file is incomplete",
        )
    down, up = header.tensors[sides["down"]], header.tensors[sides["up"]]
    for key, info in ((sides["down"], down), (sides["up"], up)):
        if info.dtype not in FLOAT_DTYPES or len(info.shape) != 2 or 0 in info.shape:
            raise InputError(
                f"{tensor_file}: tensor {key!r} is {info.dtype} {list(info.shape)}, "
                "not a 2-D float matrix"
            )
    rank, inp = down.shape
    out = up.shape[0]
    if up.shape[1] != rank:
        raise InputError(
            f"{tensor_file}: {name}: rank mismatch: down {list(down.shape)}, up {list(up.shape)}",
            hint="up must be (out, r) when down is (r, in)",
        )
    return LoraLayer(
        name=name,
        kind=LayerKind.LINEAR,
        a_key=sides["down"],
        b_key=sides["up"],
        a_shape=down.shape,
        b_shape=up.shape,
        out_features=out,
        in_features=inp,
        rank=rank,
        alpha=None,
        scale=1.0,
        scale_source="fixed",
        dtype="/".join(sorted({down.dtype, up.dtype})),
        weight_shape=(out, inp),
    )


def check_one_rank(adapter: Adapter, new_ranks: Mapping[str, int]) -> None:
    """Refuse to write an XLabs file whose layers would not all have one rank: x-flux builds
    every LoRA processor at the rank of the file's first ``.down.weight``."""
    require_one_rank(adapter, new_ranks, loader="XLabs (x-flux)")
