"""Writing a compressed adapter back in the format it was read from, atomically.

PEFT
    A directory with ``adapter_model.safetensors`` and ``adapter_config.json`` (or a bare
    ``.safetensors`` file when the input was one, with the config in the header's
    ``lora_adapter_metadata``). A directory's model card (``README.md``) is copied with a line
    saying what changed (:mod:`lora_audit.formats.model_card`); ``-o NAME.safetensors`` for a
    directory output is refused (PEFT loads a directory, not a lone file). The config makes
    PEFT rebuild every layer exactly, and every layer has one scale ``s``
    (``scale``: the command folds each layer's own scale into its factors,
    :mod:`lora_audit.commands.serving`), so that servers reading only ``lora_alpha / r``
    (vLLM) agree: ``use_rslora`` is turned off, ``r`` is the most common rank and
    ``lora_alpha = s·r``; a layer at another rank gets ``rank_pattern[key] = k`` and
    ``alpha_pattern[key] = s·k`` (the same scale). The old patterns are replaced (their keys
    could match the new modules first). Everything else in the config is kept.
kohya / LyCORIS / ComfyUI-style / diffusers / XLabs
    One ``.safetensors`` file with the same key names (``lora_down``/``lora_up`` or
    ``lora_A``/``lora_B`` as the layer had them); a rewritten layer gets ``<module>.alpha = k``
    so that ``alpha/k·up·down`` is the truncation (diffusers-processor and XLabs files have no
    alpha keys: scale 1 is baked in; XLabs files are written only when every layer ends at one
    rank, which x-flux's loader needs). LoHa, LoKr and Tucker layers that are rewritten come
    out as plain ``lora_down``/``lora_up`` layers under the same module name.
    ``ss_network_dim``/``ss_network_alpha`` are updated (``"Dynamic"`` when ranks differ).
    A diffusers file that mixes diffusers names (``.lora.down``) with PEFT's (``lora_A``), as
    diffusers' own training scripts write it, is written under PEFT's names throughout, the
    names diffusers' loader converts it to (:func:`~lora_audit.formats.diffusers_metadata.
    one_naming`): with mixed names that loader keeps only some layers.
mlx-lm
    A directory with ``adapters.safetensors`` and ``adapter_config.json``, every layer at one
    rank (:mod:`lora_audit.formats.mlx_write`).
GGUF
    Refused: compress the PEFT adapter it was converted from and convert again.

Every file is written to a temporary name in the target directory, fsync'ed and renamed; a
directory is built as a temporary sibling and renamed into place, so an interrupted run leaves
no output (and, with ``--force``, the previous output) behind. The input is never written, and
``--force`` replaces only an adapter directory
(:class:`~lora_audit.formats.output_guard.OutputGuard`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lora_audit.adapter import Adapter, LayerKind, LoraLayer, Structure
from lora_audit.choices import AdapterFormat
from lora_audit.errors import OutputError, UsageError
from lora_audit.formats import atomic
from lora_audit.formats.model_card import MODEL_CARD, carried_card
from lora_audit.formats.output_guard import Kind, OutputGuard
from lora_audit.formats.patterns import pattern_keys
from lora_audit.formats.protocols import WriteJob
from lora_audit.formats.safetensors_io import (
    DTYPE_SIZES,
    SafetensorsSource,
    StoredTensor,
    encode_floats,
    stored_from_numpy,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from lora_audit.formats.protocols import FormatWriter


#: Single-file formats that store no alpha: a rewritten layer's factors carry its scale.
NO_ALPHA_FORMATS = frozenset({AdapterFormat.DIFFUSERS, AdapterFormat.XLABS})


@dataclass(frozen=True, kw_only=True)
class NewLayer:
    """A rewritten layer: factors with the scale baked in (``ΔW_k = b @ a``), as stored.

    ``b`` has shape (out, k), ``a`` shape (k, in) (flattened as in :class:`LoraLayer`), both
    already in the layer's stored dtype (:func:`new_layer`). ``extra`` holds other tensors of
    the layer to replace, by key, as they are to be stored (DoRA magnitudes recomputed by
    ``compress --base``).
    """

    b: StoredTensor
    a: StoredTensor
    extra: Mapping[str, StoredTensor] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.b.shape[1])


def writer_of(adapter: Adapter) -> FormatWriter:
    """The registry's writer for ``adapter``'s format
    (:func:`~lora_audit.formats.registry.writer_for`)."""
    from lora_audit.formats.registry import writer_for

    return writer_for(adapter.format)


def output_is_directory(adapter: Adapter) -> bool:
    """PEFT adapters read from a directory (or with a config), and mlx-lm adapters, are written
    as directories."""
    return output_kind(adapter) == "directory"


def refuse_unwritable(adapter: Adapter) -> None:
    """Refuse formats that compress cannot write back exactly (GGUF; mlx-lm without config).

    Raises
    ------
    UsageError
        With what to do instead.
    """
    writer_of(adapter).refuse(adapter)


def output_kind(adapter: Adapter) -> Kind:
    """Whether ``compress`` writes ``adapter`` as a directory or as one file."""
    return writer_of(adapter).output_kind(adapter)


def refuse_file_name(adapter: Adapter, output: Path) -> None:
    """Refuse ``-o NAME.safetensors`` where the output is a directory (a PEFT adapter with its
    config, an mlx-lm adapter): PEFT's ``from_pretrained`` and mlx-lm load a directory, and a
    directory named like a file would mislead.

    Raises
    ------
    UsageError
        Naming the directory to pass instead.
    """
    if output_kind(adapter) == "directory" and output.suffix.lower() == ".safetensors":
        what, loader = writer_of(adapter).loader
        raise UsageError(
            f"-o {output}: {what} adapter with adapter_config.json is written as a directory, "
            f"which is what {loader} loads, not as one .safetensors file",
            hint=f"pass a directory, e.g. -o {output.with_suffix('')}",
        )


def output_guard(
    adapter: Adapter, *, force: bool, base: Path | None = None, inputs: Sequence[Adapter] = ()
) -> OutputGuard:
    """The guard of a ``compress`` run: the adapter's files (and the base model's) protected.

    ``inputs``: more adapters whose files are protected too (the inputs of ``merge``).
    """
    guard = OutputGuard(force=force)
    for each in (adapter, *inputs):
        guard.add_adapter(each.path)
        guard.add_adapter(each.tensor_file)
    if base is not None:
        guard.add_base(base)
    return guard


def check_output(
    adapter: Adapter,
    output: Path,
    *,
    force: bool,
    base: Path | None = None,
    inputs: Sequence[Adapter] = (),
) -> OutputGuard:
    """Refuse outputs that would overwrite or delete an input, or an existing path.

    Returns
    -------
    OutputGuard
        The guard, with ``output`` claimed as ``--output``.

    Raises
    ------
    UsageError
        When ``output`` is an input, contains one, lies in an input directory, or exists and
        ``force`` is off (or, with ``force``, is a directory holding other files).
    """
    refuse_unwritable(adapter)
    guard = output_guard(adapter, force=force, base=base, inputs=inputs)
    guard.plan(output, role="--output", kind=output_kind(adapter), adapter=True)
    refuse_file_name(adapter, output)
    return guard


def write_compressed(
    adapter: Adapter,
    *,
    new_layers: Mapping[str, NewLayer],
    output: Path,
    provenance: Mapping[str, str],
    force: bool,
    base: Path | None = None,
    inputs: Sequence[Adapter] = (),
    card_note: str = "",
    scale: float = 1.0,
) -> Path:
    """Write ``adapter`` with ``new_layers`` replacing the layers of the same name.

    ``inputs``: further adapters the output must not replace (:func:`check_output`).
    ``scale``: the one scale of a PEFT output (:func:`peft_config`).
    ``card_note`` is appended to the model card when a directory is written and the input has
    one (``README.md``).

    Returns
    -------
    Path
        The tensor file written.
    """
    guard = check_output(adapter, output, force=force, base=base, inputs=inputs)
    writer = writer_of(adapter)
    writer.check_ranks(adapter, {name: new.rank for name, new in new_layers.items()})
    job = WriteJob(
        adapter=adapter,
        new_layers=new_layers,
        output=output,
        guard=guard,
        provenance=provenance,
        card_note=card_note,
        scale=scale,
    )
    return writer.write(job)


def output_tensors(
    adapter: Adapter, new_layers: Mapping[str, NewLayer]
) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """Every tensor of the output: the new layers', and the others' bytes as they were."""
    source = adapter.source
    assert source is not None
    replaced: set[str] = set()
    out: dict[str, StoredTensor] = {}
    by_name = {layer.name: layer for layer in adapter.layers}
    for name, new in new_layers.items():
        layer = by_name[name]
        replaced |= {layer.a_key, layer.b_key, *layer.keys.values()}
        for key, tensor in _new_keys(adapter, layer, new).items():
            out[key] = tensor
        out.update(new.extra)
    for key in _all_keys(adapter):
        if key not in replaced and key not in out:
            if isinstance(source, SafetensorsSource):
                out[key] = source.raw(key)
            else:
                out[key] = stored_from_numpy(source.get(key))
    return out, dict(adapter.metadata)


def _all_keys(adapter: Adapter) -> list[str]:
    keys: list[str] = []
    for layer in adapter.layers:
        keys += [layer.a_key, layer.b_key, *layer.keys.values(), *layer.extra_keys]
    keys += list(adapter.passthrough_keys)
    return list(dict.fromkeys(keys))


def _new_keys(adapter: Adapter, layer: LoraLayer, new: NewLayer) -> dict[str, StoredTensor]:
    """The stored tensors of a rewritten layer, in the layer's own layout."""
    import numpy as np

    k = new.rank
    spatial = layer.weight_shape[2:] if layer.kind is LayerKind.CONV else ()
    if layer.structure is Structure.LORA:  # each factor keeps its stored layout, r → k
        a = new.a.reshape(k, *layer.a_shape[1:])
        b = new.b.reshape(layer.b_shape[0], k, *layer.b_shape[2:])
    elif layer.kind is LayerKind.CONV:
        a = new.a.reshape(k, layer.weight_shape[1], *spatial)
        b = new.b.reshape(layer.out_features, k, *([1] * len(spatial)))
    else:
        a, b = new.a, new.b
    if not writer_of(adapter).stores_alpha(adapter, layer):
        return {layer.a_key: a, layer.b_key: b}
    module = layer.name
    alpha = {f"{module}.alpha": encode_floats(np.array(float(k)), b.dtype)}
    if layer.structure is Structure.LORA:  # its own key names (lora_down or lora_A style)
        return {layer.a_key: a, layer.b_key: b, **alpha}
    return {f"{module}.lora_down.weight": a, f"{module}.lora_up.weight": b, **alpha}


def new_layer(
    layer: LoraLayer,
    *,
    b: npt.NDArray[np.float64],
    a: npt.NDArray[np.float64],
    extra: Mapping[str, StoredTensor] | None = None,
    dtypes: tuple[str, str] | None = None,
) -> NewLayer:
    """A :class:`NewLayer` from float64 factors, each rounded to its stored dtype.

    Parameters
    ----------
    dtypes
        The stored dtypes of ``(B, A)`` (:func:`stored_dtypes`); by default the first of
        ``layer.dtype`` for both.
    """
    b_dtype, a_dtype = dtypes or (layer.dtype.split("/")[0],) * 2
    try:
        return NewLayer(b=encode_floats(b, b_dtype), a=encode_floats(a, a_dtype), extra=extra or {})
    except OverflowError as exc:
        raise OutputError(
            f"layer {layer.name!r}: a truncated factor does not fit its stored dtype ({exc})",
            hint="convert the adapter to float32 first, or keep this layer's rank",
        ) from exc


def stored_dtypes(adapter: Adapter, layer: LoraLayer) -> tuple[str, str]:
    """The dtypes ``(B, A)`` of a layer's factors as the file stores them.

    A plain LoRA layer's factors keep their own dtypes (an F32 ``lora_A`` next to a BF16
    ``lora_B`` stays F32); a LoHa/LoKr/Tucker layer rewritten as ``lora_down``/``lora_up``
    gets the widest dtype among its tensors for both.
    """
    header = getattr(adapter.source, "header", None)
    if header is None:
        first = layer.dtype.split("/")[0]
        return first, first
    if layer.structure is Structure.LORA:
        return header.tensors[layer.b_key].dtype, header.tensors[layer.a_key].dtype
    widest = widest_dtype(header.tensors[key].dtype for key in layer.keys.values())
    return widest, widest


def widest_dtype(dtypes: Iterable[str]) -> str:
    """The dtype among ``dtypes`` (safetensors names) that holds the others' values."""
    return max(dtypes, key=lambda d: DTYPE_SIZES[d] + (d == "F16"))  # F16 beats BF16: precision


def peft_config(
    adapter: Adapter, new_layers: Mapping[str, NewLayer], *, scale: float = 1.0
) -> dict[str, Any]:
    """The ``adapter_config.json`` under which PEFT rebuilds every layer exactly.

    A new layer's factors hold ``ΔW / scale`` and get ``alpha = scale·k``; a layer left as
    it was keeps ``alpha = layer.scale·r``. Where every kept layer's scale is ``scale``
    (:mod:`lora_audit.commands.serving` sees to it for PEFT outputs), ``lora_alpha / r`` is
    that one scale whatever ``rank_pattern`` and ``alpha_pattern`` say.
    """
    pairs: dict[str, tuple[int, float]] = {}
    for layer in adapter.layers:
        if layer.name in new_layers:
            k = new_layers[layer.name].rank
            pairs[layer.name] = (k, scale * k)
        else:  # its own scale (the one scale where the command made them agree)
            pairs[layer.name] = (layer.rank, layer.scale * layer.rank)
    (top_rank, top_alpha), _ = Counter(pairs.values()).most_common(1)[0]
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float | int] = {}
    keys = pattern_keys(list(pairs))
    for name, (rank, alpha) in pairs.items():
        if (rank, alpha) != (top_rank, top_alpha):
            key = keys[name]
            rank_pattern[key] = rank
            alpha_pattern[key] = _number(alpha)
    config = dict(adapter.config)
    config.update(
        r=top_rank,
        lora_alpha=_number(top_alpha),
        use_rslora=False,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    return config


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def kohya_metadata(adapter: Adapter, new_layers: Mapping[str, NewLayer]) -> dict[str, str]:
    ranks = {
        new_layers[n].rank if n in new_layers else layer.network_dim or layer.rank
        for n, layer in ((layer.name, layer) for layer in adapter.layers)
    }
    if "ss_network_dim" not in adapter.metadata:
        return {}
    if len(ranks) == 1 and all(name in new_layers for name in (x.name for x in adapter.layers)):
        k = str(ranks.pop())
        return {"ss_network_dim": k, "ss_network_alpha": k}
    return {"ss_network_dim": "Dynamic", "ss_network_alpha": "Dynamic"}


def carry_card(adapter: Adapter, directory: Path, *, note: str) -> None:
    """Copy the input's model card into the new directory, ``note`` appended."""
    if (card := carried_card(adapter, note)) is not None:
        write_plain(directory / MODEL_CARD, card)


def write_plain(path: Path, data: bytes | Callable[[IO[bytes]], None]) -> None:
    """Write and fsync ``data`` (bytes, or a function that writes them) inside a new directory."""
    with path.open("wb") as fh:
        atomic.fill(fh, data, sync=True)
