"""Every tensor that looks like a LoRA factor is read as part of a layer, or named.

A tensor whose name carries a low-rank or LyCORIS marker (:data:`MARKER`: ``lora``
in any spelling — ``lora_A``/``lora_B``, ``lora_up``/``lora_down``, ``.lora.up``/``.down``,
``lora_mid``, ``lora_magnitude_vector``, ``lora_embedding_A`` —, ``hada_``, ``lokr_``,
``dora_scale``, a ``.alpha``) holds part of some ΔW. A reader that leaves one out reports
numbers that are not the adapter's, so the rule is checked here, in one place, on what the
file holds rather than on what a reader says it did:

* :func:`check_accounted`, after every load: each marker key of the file is a key of a
  layer (its factors, its ``alpha``, its DoRA magnitude or ``lora_B`` bias) or the load
  fails with an :class:`~lora_audit.errors.InputError` naming it; tensors of non-low-rank
  LyCORIS modules (full ``diff``, OFT) are named in a warning.
* :func:`unread`, after an audit: the marker keys of the file minus the keys whose bytes the
  tensor source actually read (:attr:`SafetensorsSource.materialised
  <lora_audit.formats.safetensors_io.SafetensorsSource.materialised>`, recorded where the
  bytes are read) minus the extras the report states. The tests hold it at zero for every
  writer's file and every sample; :func:`require_read`, called by ``inspect`` and every
  command built on it, raises when a key of an audited layer is among them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Set

from lora_audit.adapter import Adapter
from lora_audit.errors import InputError

__all__ = [
    "MARKER",
    "check_accounted",
    "claimed_keys",
    "marker_keys",
    "read_keys",
    "require_read",
    "unread",
]

#: Names of tensors that hold (part of) a low-rank ΔW or its scale: a dot-separated part of
#: the name that is a factor's role. Module names are not roles: kohya's ``lora_unet_…`` and
#: ``lora_te_…`` prefixes do not mark a tensor.
MARKER = re.compile(
    r"(?:^|\.)(?:lora|\w+_lora\d*|lora_(?:[abe]|up|down|mid|magnitude_vector|embedding_[ab]"
    r"|linear_layer)|hada_\w+|lokr_\w+|dora_scale|alpha)(?:\.|\Z)",
    re.IGNORECASE,
)
#: Tensors of LyCORIS modules that are not low-rank (full ``diff``, OFT, IA³ …): stored
#: legitimately, copied by ``compress``, not audited — a warning names them.
EXTRA = re.compile(r"\.(?:diff|diff_b|oft_blocks|oft_diag|on_input|rescale)\Z")
_MAGNITUDE = re.compile(r"(?:\.lora_magnitude_vector(?:\.weight)?|\.dora_scale)\Z")
#: ``"<key>[e]"``: slice ``e`` of a stacked tensor (mlx-lm, GGUF experts).
_SLICE = re.compile(r"\[\d+\]\Z")
#: Keys shown in an error before "and N more".
_SHOWN = 5


def marker_keys(keys: Iterable[str]) -> list[str]:
    """The keys among ``keys`` whose name carries a LoRA marker, in their order."""
    return [key for key in keys if MARKER.search(key)]


def stored_keys(adapter: Adapter) -> tuple[str, ...] | None:
    """Every tensor key of the adapter's file, or ``None`` for a source that is no file."""
    source = adapter.source
    stored = getattr(source, "stored", source)  # mlx-lm wraps its safetensors source
    header = getattr(stored, "header", None)
    if header is not None:
        return tuple(header.tensors)
    names = getattr(stored, "tensor_names", None)
    return tuple(names) if names is not None else None


def claimed_keys(adapter: Adapter) -> set[str]:
    """The stored keys the adapter's layers say they are made of (slices: the whole tensor).

    A DoRA magnitude counts only for a layer read as DoRA: beside a plain LoRA layer it would
    be dropped by PEFT's loader and by the audit alike.
    """
    keys: set[str] = set()
    for layer in adapter.layers:
        keys.update((layer.a_key, layer.b_key, *layer.keys.values()))
        # a DoRA magnitude is part of a layer only where the layer is read as DoRA
        keys.update(k for k in layer.extra_keys if layer.dora or not _MAGNITUDE.search(k))
    return {_SLICE.sub("", key) for key in keys}


def read_keys(adapter: Adapter) -> Set[str] | None:
    """The keys whose bytes the adapter's source has read so far, or ``None`` when the source
    does not record it."""
    source = adapter.source
    stored = getattr(source, "stored", source)
    read = getattr(stored, "materialised", None)
    return None if read is None else frozenset(read)


def check_accounted(adapter: Adapter) -> Adapter:
    """The post-condition of every load: no marker key of the file is outside every layer.

    A tensor of a non-low-rank LyCORIS module (:data:`EXTRA`), and the ``.alpha`` beside it,
    is stored legitimately but not audited: it is named in a warning added to the adapter's
    (shown on stderr with a table, in ``warnings`` of the JSON report).

    Returns
    -------
    Adapter
        ``adapter``, with that warning when there is such a tensor.

    Raises
    ------
    InputError
        Naming the marker keys no layer reads (the first few, and how many).
    """
    keys = stored_keys(adapter)
    if keys is None:
        return adapter
    claimed = claimed_keys(adapter)
    extras = [key for key in keys if EXTRA.search(key) and key not in claimed]
    modules = {key.rpartition(".")[0] for key in extras}
    left: list[str] = []
    for key in marker_keys(keys):
        if key in claimed:
            continue
        if key.endswith(".alpha") and key.removesuffix(".alpha") in modules:
            extras.append(key)
        else:
            left.append(key)
    if left:
        raise InputError(
            f"{adapter.tensor_file}: {len(left)} tensor(s) named like LoRA factors are part of "
            f"no layer this {adapter.format} reader knows: {_names(left)}",
            hint="lora-audit would report numbers without them; if the file loads in its "
            "trainer, please report these key names (remove them only if they are not part of "
            "the adapter)",
        )
    if not extras:
        return adapter
    warning = (
        f"{adapter.tensor_file}: {len(extras)} tensor(s) of {len(modules)} module(s) that are "
        f"not low-rank (full diff, OFT) are not audited, only copied: {_names(extras)}"
    )
    return dataclasses.replace(adapter, warnings=(*adapter.warnings, warning))


def unread(adapter: Adapter, *, warned: Iterable[str] = ()) -> list[str]:
    """The marker keys of the file whose bytes were never read and that are not stated.

    Call it after the audit. A key is stated when a warning names it (the adapter's, or one of
    ``warned``: the engine's, a command's), or when it is the DoRA magnitude or ``lora_B``
    bias of a layer the report shows as such (a DoRA adapter's ``use_dora``; its spectrum is
    that of ``s·B·A`` unless ``--base`` reads the magnitudes too).

    Raises
    ------
    ValueError
        For an adapter whose source does not record what it read.
    """
    keys, read = stored_keys(adapter), read_keys(adapter)
    if keys is None or read is None:
        raise ValueError(f"{adapter.path}: its tensor source does not record what it reads")
    text = "\n".join((*adapter.warnings, *warned))
    stated = {
        key
        for layer in adapter.layers
        for key in layer.extra_keys
        if (layer.dora and _MAGNITUDE.search(key)) or key.endswith(".lora_B.bias")
    }
    seen = read | stated
    return [key for key in marker_keys(keys) if key not in seen and key not in text]


def require_read(adapter: Adapter, *, warned: Iterable[str] = ()) -> None:
    """The post-condition of an audit: every marker key of the adapter's layers was read (or
    is stated, as for :func:`unread`).

    With :func:`check_accounted` on load (every marker key of the file is some layer's), this
    holds every marker key of the file to have been read — while an adapter narrowed to some
    of its layers (``dataclasses.replace``) is still audited. Nothing is checked for a source
    that does not record what it reads (tensors in memory).

    Raises
    ------
    InputError
        Naming the keys left unread: the numbers would not be the adapter's.
    """
    if stored_keys(adapter) is None or read_keys(adapter) is None:
        return
    claimed = claimed_keys(adapter)
    left = [key for key in unread(adapter, warned=warned) if key in claimed]
    if left:
        raise InputError(
            f"{adapter.tensor_file}: {len(left)} tensor(s) named like LoRA factors were not "
            f"read by the audit: {_names(left)}",
            hint="the numbers would leave them out; this is a bug in lora-audit's "
            f"{adapter.format} reader: please report it with these key names",
        )


def _names(keys: list[str]) -> str:
    shown = ", ".join(repr(key) for key in keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")
