"""diffusers pipeline LoRA files: one LoRA config per component in ``lora_adapter_metadata``.

diffusers' ``save_lora_weights`` (SD, SDXL, Flux, … pipelines; the diffusers training scripts;
SimpleTuner) writes every component's tensors under its name (``unet.…``,
``text_encoder.…``, ``text_encoder_2.…``, ``transformer.…``) and stores the JSON of each
component's ``LoraConfig`` in the header's ``lora_adapter_metadata`` with the same prefix
(``{"unet.r": 4, "unet.lora_alpha": 8, "text_encoder.alpha_pattern": {…}, …}``). On load,
each component gets the tensors and config keys under its prefix, with the prefix removed
(``load_lora_adapter`` / ``_load_lora_into_text_encoder``), and PEFT applies that config to
the component's modules — so ``rank_pattern`` / ``alpha_pattern`` keys are matched against
module names *without* the component prefix.

This module reads such a file component by component through the PEFT reader (each
component's tensors and config, prefix removed, exactly as diffusers hands them to PEFT) and
puts the prefix back on every layer and key. The model-level form (``save_lora_adapter``:
unprefixed config keys) is read by :mod:`lora_audit.formats.peft` itself.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lora_audit.adapter import Adapter, LoraLayer, ScaleSource, natural_key
from lora_audit.choices import AdapterFormat
from lora_audit.errors import InputError
from lora_audit.formats.config_files import parse_json
from lora_audit.formats.patterns import match_pattern
from lora_audit.formats.safetensors_io import Header, SafetensorsSource, TensorInfo

if TYPE_CHECKING:
    from lora_audit.formats.writer import NewLayer

METADATA_KEY = "lora_adapter_metadata"
#: diffusers-format factor names → PEFT's, as diffusers' loaders convert them before PEFT
#: sees them (``convert_unet_state_dict_to_peft``; ``convert_state_dict_to_peft`` for text
#: encoders): the first substring that occurs is replaced.
_TO_PEFT = (
    *(
        (f".to_{m}_lora.{s}.", f".to_{m}.lora_{x}.")
        for m in "qkv"
        for s, x in (("down", "A"), ("up", "B"))
    ),
    (".to_out_lora.down.", ".to_out.0.lora_A."),
    (".to_out_lora.up.", ".to_out.0.lora_B."),
    (".lora_linear_layer.down.", ".lora_A."),
    (".lora_linear_layer.up.", ".lora_B."),
    (".lora.down.", ".lora_A."),
    (".lora.up.", ".lora_B."),
)
#: ``Adapter.format`` of a file read here.
PIPELINE_FORMAT = AdapterFormat.DIFFUSERS_PIPELINE

__all__ = [
    "PIPELINE_FORMAT",
    "component_configs",
    "one_naming",
    "partial_load_warning",
    "pipeline_metadata",
    "read_pipeline",
]

_T = TypeVar("_T")


def component_configs(header: Header, *, where: str) -> dict[str, dict[str, Any]] | None:
    """Each component's LoRA config, by component name, or ``None`` for any other header.

    The per-component form is recognised by its dotted keys (PEFT config keys have no dot).

    Raises
    ------
    InputError
        When ``lora_adapter_metadata`` is not a JSON object.
    """
    text = header.metadata.get(METADATA_KEY)
    if text is None:
        return None
    raw = parse_json(text, where=f"{where}: {METADATA_KEY} in the header")  # bounded, no dupes
    if not isinstance(raw, dict):
        raise InputError(f"{where}: {METADATA_KEY} in the header is not a JSON object")
    if not any("." in key for key in raw):
        return None
    configs: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        component, _, field = key.partition(".")
        if field:
            configs.setdefault(component, {})[field] = value
    return configs


def read_pipeline(
    *,
    path: Path,
    tensor_file: Path,
    header: Header,
    configs: Mapping[str, Mapping[str, Any]],
    alpha: float | None,
) -> Adapter:
    """Read a diffusers pipeline LoRA file whose header holds per-component configs.

    ``alpha`` (``--alpha``) applies only to a component that has no config in the header.
    """
    from lora_audit.formats.peft import read_peft

    by_component, real = _split(header, tensor_file=tensor_file)
    layers: list[LoraLayer] = []
    passthrough: list[str] = []
    warnings: list[str] = []
    for component, tensors in by_component.items():
        config = configs.get(component)
        meta = {METADATA_KEY: json.dumps(config)} if config is not None else {}
        sub = Header(tensors=tensors, metadata=meta, data_start=header.data_start)
        part = read_peft(
            path=path, tensor_file=tensor_file, config_file=None, alpha=alpha, header=sub
        )
        source = _source(config, alpha)
        if source != "assumed":
            warnings += part.warnings
        else:
            warnings.append(
                f"{tensor_file}: component {component!r} has no LoRA config in "
                f"{METADATA_KEY} (it has {', '.join(sorted(configs))}): scale 1 assumed for "
                f"its {len(part.layers)} layer(s) (pass --alpha to set it)"
            )
        layers += [_prefixed(layer, component, config, source, real) for layer in part.layers]
        passthrough += [real[f"{component}.{key}"] for key in part.passthrough_keys]
    layers.sort(key=lambda layer: natural_key(layer.name))
    if (partial := partial_load_warning(header, where=str(tensor_file))) is not None:
        warnings.append(partial)
    return Adapter(
        path=path,
        tensor_file=tensor_file,
        format=PIPELINE_FORMAT,
        layers=tuple(layers),
        passthrough_keys=tuple(passthrough),
        config={name: dict(config) for name, config in configs.items()},
        metadata=header.metadata,
        warnings=tuple(warnings),
        source=SafetensorsSource(tensor_file, header),
    )


def _split(
    header: Header, *, tensor_file: Path
) -> tuple[dict[str, dict[str, TensorInfo]], dict[str, str]]:
    """The tensors of each component under the names PEFT sees, and those names' real keys.

    Returns
    -------
    by_component
        Component name → {PEFT-style key without the prefix → its header entry}.
    real
        ``"<component>.<PEFT-style key>"`` → the key stored in the file.
    """
    by_component: dict[str, dict[str, TensorInfo]] = {}
    real: dict[str, str] = {}
    for key, info in header.tensors.items():
        component, _, rest = key.partition(".")
        if not rest:
            raise InputError(
                f"{tensor_file}: diffusers pipeline LoRA with a key outside any component: {key!r}",
                hint="every key of a save_lora_weights file starts with its component's name",
            )
        name = _peft_name(rest)
        if f"{component}.{name}" in real:
            raise InputError(
                f"{tensor_file}: {key!r} and {real[f'{component}.{name}']!r} are the same "
                "factor under two names",
                hint="the file mixes diffusers and PEFT key names for one module",
            )
        real[f"{component}.{name}"] = key
        by_component.setdefault(component, {})[name] = info
    return by_component, real


def _source(config: Mapping[str, Any] | None, alpha: float | None) -> ScaleSource:
    given = ("lora_alpha", "alpha")  # LoRA, and PEFT's LoHa/LoKr configs
    if config is not None and (
        any(config.get(k) is not None for k in given) or config.get("alpha_pattern")
    ):
        return "metadata"
    return "option" if alpha is not None else "assumed"


def _peft_name(key: str) -> str:
    """A component's key as diffusers hands it to PEFT (``.processor.`` dropped, renamed)."""
    key = key.replace(".processor.", ".")
    for old, new in _TO_PEFT:
        if old in key:
            return key.replace(old, new)
    return key


def one_naming(tensors: Mapping[str, _T]) -> dict[str, _T]:
    """``tensors`` under PEFT's factor names when their names mix diffusers' and PEFT's.

    diffusers' loader converts diffusers names (``.lora.down``, ``.to_q_lora.up``,
    ``.lora_linear_layer.down``) to PEFT's only when the *first* key it gets has no
    ``lora_A`` (``loaders/peft.py``, ``load_lora_adapter``: ``if "lora_A" not in
    first_key``), so a file that mixes both spellings loads in full or in part depending on
    which tensor comes first. Under PEFT's names throughout — the names that loader converts
    to — every layer loads whatever the order. Names that do not mix are kept.
    """
    renamed = {_peft_name(key): key for key in tensors}
    if all(new == old for new, old in renamed.items()) or not any(
        ".lora_A." in key or ".lora_B." in key for key in tensors
    ):
        return dict(tensors)
    if len(renamed) != len(tensors):
        raise ValueError("two factors would have the same PEFT name")
    return {new: tensors[old] for new, old in renamed.items()}


#: Components whose factors diffusers hands to ``load_lora_adapter`` (the first-key rule);
#: a file without these prefixes is one model's (``save_lora_adapter``).
_MODEL_COMPONENTS = frozenset({"unet", "transformer", "prior", "controlnet"})


def partial_load_warning(header: Header, *, where: str) -> str | None:
    """The warning for a file that diffusers itself loads only in part, if it is one.

    ``load_lora_adapter`` converts diffusers names to PEFT's only when the first key of the
    model's tensors (in the file's data order, which ``safetensors`` keeps) has no ``lora_A``;
    when it has one, the ``.lora.down``/``.up`` layers of a mixed file are dropped.
    """
    groups: dict[str, list[tuple[int, str]]] = {}
    for key, info in header.tensors.items():
        component = key.partition(".")[0]
        group = component if component in _MODEL_COMPONENTS else ""
        groups.setdefault(group, []).append((info.start, key))
    for group, keys in groups.items():
        names = [key for _, key in keys]
        dropped = [k for k in names if _peft_name(k) != k and ".lora_A." not in k]
        if not dropped or not any(".lora_A." in k or ".lora_B." in k for k in names):
            continue
        first = min(keys)[1]
        if ".lora_A" in first:
            return (
                f"{where}: diffusers' loader reads only part of {group or 'this file'!r}: its "
                f"first tensor {first!r} is named lora_A, so the {len(dropped)} tensors named "
                "the diffusers way (.lora.down/.up) are not converted and are dropped; "
                "lora-audit reads every layer (compress writes them all under PEFT names)"
            )
    return None


def _prefixed(
    layer: LoraLayer,
    component: str,
    config: Mapping[str, Any] | None,
    source: ScaleSource,
    real: Mapping[str, str],
) -> LoraLayer:
    """``layer`` of a component: its name prefixed, its keys those stored in the file."""
    if source == "metadata" and config is not None and config.get("lora_alpha") is None:
        # only alpha_pattern given: a layer it does not match falls back to PEFT's default
        pattern = config.get("alpha_pattern") or {}
        source = "metadata" if match_pattern(pattern, layer.name) is not None else "assumed"

    def key(k: str) -> str:
        return real[f"{component}.{k}"]

    return dataclasses.replace(
        layer,
        name=f"{component}.{layer.name}",
        a_key=key(layer.a_key),
        b_key=key(layer.b_key),
        keys={role: key(k) for role, k in layer.keys.items()},
        extra_keys=tuple(key(k) for k in layer.extra_keys),
        scale_source=source,
    )


def pipeline_metadata(adapter: Adapter, new_layers: Mapping[str, NewLayer]) -> dict[str, Any]:
    """The per-component ``lora_adapter_metadata`` under which diffusers rebuilds the output.

    Each component's config is what :func:`~lora_audit.formats.writer.peft_config` writes for
    a PEFT adapter (scales baked into rewritten factors), over the component's own layer
    names, with the component prefix put back on every key.
    """
    from lora_audit.formats.writer import peft_config

    out: dict[str, Any] = {}
    components = dict.fromkeys(layer.name.partition(".")[0] for layer in adapter.layers)
    for component in components:
        prefix = f"{component}."
        mine = [layer for layer in adapter.layers if layer.name.startswith(prefix)]
        inner = tuple(
            dataclasses.replace(layer, name=layer.name.removeprefix(prefix)) for layer in mine
        )
        sub = dataclasses.replace(
            adapter, layers=inner, config=dict(adapter.config.get(component) or {})
        )
        renamed = {
            name.removeprefix(prefix): new
            for name, new in new_layers.items()
            if name.startswith(prefix)
        }
        out |= {f"{prefix}{k}": v for k, v in peft_config(sub, renamed).items()}
    return out
