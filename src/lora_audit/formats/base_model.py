"""The pretrained weights of a base model, for the base-aware audit (``inspect --base``).

A base is one of:

* a ``.safetensors`` file;
* a directory with ``model.safetensors`` (or ``diffusion_pytorch_model.safetensors``, or a
  single ``*.safetensors`` file);
* a sharded model: ``model.safetensors.index.json`` (or any single ``*.safetensors.index.json``)
  whose ``weight_map`` names the shard of every tensor.

Only headers are read up front (each validated by
:func:`~lora_audit.formats.safetensors_io.read_header`, and only those of the shards that hold
an adapted weight); the weights themselves are memory-mapped and read one layer group at a
time. Pickled checkpoints (``pytorch_model.bin``) are refused unopened.

Matching adapter layers to base weights
---------------------------------------
A layer ``name`` (the module path recorded in the adapter) is looked up as ``<module>.weight``
among the base's keys:

1. dotted names (PEFT, diffusers): ``name`` itself, then ``name`` with a key prefix the base
   adds (the one base key ending in ``.<name>.weight``), then the same two with leading
   segments of ``name`` dropped one at a time (``bert.encoder.layer.0.…`` →
   ``encoder.layer.0.…``), keeping at least two segments;
2. kohya names (``lora_unet_down_blocks_0_…``, ``lora_te1_text_model_…``): the ``lora_<part>_``
   prefix is removed and the rest compared with the base keys whose dots are turned into
   underscores, exactly or as the unique underscore-suffix.

A name that matches two base keys equally well is ambiguous and left unmatched. Orientation
comes from the stored shape: the weight must be ``(out, in)`` as ``ΔW`` (conv kernels
flattened, a 1×1 conv accepted for a linear layer), or ``(in, out)`` (GPT-2 ``Conv1D``;
for a square weight only when the adapter's config says ``fan_in_fan_out``); an embedding is
stored ``(vocab, dim)`` and transposed to ``ΔW``'s ``(dim, vocab)``.
"""

from __future__ import annotations

import math
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from lora_audit.adapter import Adapter, LayerKind, LoraLayer
from lora_audit.errors import InputError
from lora_audit.formats.config_files import file_kind, parse_json, read_bounded
from lora_audit.formats.safetensors_io import FLOAT_DTYPES, Header, SafetensorsSource, read_header

if TYPE_CHECKING:
    import numpy.typing as npt

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
INDEX_SUFFIX = ".safetensors.index.json"
#: Single-file names looked for in a directory, in order.
SINGLE_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors")
INDEX_NAMES = tuple(name.removesuffix(".safetensors") + INDEX_SUFFIX for name in SINGLE_NAMES)
#: Largest index file read, in bytes (real ones are well under 1 MiB).
MAX_INDEX_BYTES = 64 * 1024 * 1024
#: kohya / sd-scripts module prefixes, removed before matching.
_KOHYA_PREFIX = re.compile(r"^lora_(?:unet|te[0-9]?|transformer|text_encoder[0-9]?|dit)_")
#: How many unmatched layer names an error or warning shows.
SHOWN = 5


@dataclass(frozen=True, kw_only=True)
class BaseWeight:
    """Where one adapted layer's pretrained weight ``W`` is stored, and how to orient it.

    Attributes
    ----------
    layer
        The adapter layer's name.
    key
        The tensor's key in the base checkpoint (``encoder.layer.0.attention.self.query.weight``).
    file
        The safetensors file (shard) holding it.
    stored_shape
        Its shape as stored.
    dtype
        Its stored dtype (``"F32"``, ``"BF16"``, …).
    transpose
        ``True`` when it is stored ``(in, out)`` (GPT-2 ``Conv1D``) or as an embedding
        ``(vocab, dim)``: ``W`` is then the transpose of the stored matrix.
    """

    layer: str
    key: str
    file: Path
    stored_shape: tuple[int, ...]
    dtype: str
    transpose: bool


@dataclass(frozen=True, kw_only=True)
class BaseMatch:
    """The result of matching an adapter's layers against a base model.

    Attributes
    ----------
    weights
        Matched layers, by layer name.
    unmatched
        ``(layer name, reason)`` for every layer without a usable base weight.
    """

    weights: Mapping[str, BaseWeight]
    unmatched: tuple[tuple[str, str], ...]


class BaseModel:
    """A base checkpoint: its tensor keys, where each lives, and memory-mapped access.

    Build it with :func:`open_base`. Headers of shards are read (and validated) the first time
    a tensor in them is needed.
    """

    def __init__(self, path: Path, *, shards: Mapping[str, Path], index: Path | None) -> None:
        self.path = path
        self.index = index
        self._shards = dict(shards)
        self._headers: dict[Path, Header] = {}
        self._sources: dict[Path, SafetensorsSource] = {}

    @property
    def keys(self) -> Sequence[str]:
        """Every tensor key of the checkpoint, in stored order."""
        return list(self._shards)

    @property
    def files(self) -> tuple[Path, ...]:
        """The distinct safetensors files of the checkpoint, in first-use order."""
        return tuple(dict.fromkeys(self._shards.values()))

    def header(self, file: Path) -> Header:
        """The validated header of one shard (read once)."""
        header = self._headers.get(file)
        if header is None:
            header = self._headers[file] = read_header(file)
        return header

    def locate(self, key: str) -> tuple[Path, tuple[int, ...], str]:
        """``(file, stored shape, dtype)`` of a tensor, checked against its shard's header.

        Raises
        ------
        InputError
            When the index names a shard that does not hold the tensor.
        """
        file = self._shards[key]
        info = self.header(file).tensors.get(key)
        if info is None:
            raise InputError(
                f"{self.index or file}: tensor {key!r} is not in {file.name}",
                hint="the index does not belong to these shards; download the model again",
            )
        return file, info.shape, info.dtype

    def load(self, weight: BaseWeight, *, out_features: int, in_features: int) -> npt.NDArray[Any]:
        """``W`` of one layer as an ``(out_features, in_features)`` array (BF16 as float32).

        Transposed or reshaped as a view of the array read, not copied.
        """
        source = self._sources.get(weight.file)
        if source is None:
            source = self._sources[weight.file] = SafetensorsSource(
                weight.file, self.header(weight.file)
            )
        tensor = source.get(weight.key)
        if weight.transpose:
            return tensor.reshape(in_features, out_features).T
        return tensor.reshape(out_features, in_features)


def open_base(path: Path, *, role: str = "--base") -> BaseModel:
    """Find the base checkpoint at ``path`` and read its key list (no tensor data).

    ``role`` names the input in error messages (``--base``, or ``TUNED`` for a full model).

    Raises
    ------
    InputError
        When nothing usable is there: a missing path, a pickled checkpoint, no safetensors
        file, several candidates, or a malformed index.
    """
    if not path.exists():
        raise InputError(f"{role} {path}: no such file or directory")
    kind = path.stat().st_mode
    if not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
        raise InputError(
            f"{role} {path}: {file_kind(kind)}, not a file or directory",
            hint="point --base at the model's directory or its .safetensors file",
        )
    if path.is_file():
        if path.name.endswith(INDEX_SUFFIX):
            return _from_index(path, base=path)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise _refuse_pickle(path, role=role)
        if path.suffix != ".safetensors":
            raise InputError(
                f"{role} {path}: not a .safetensors file or a *.safetensors.index.json",
                hint="point --base at the model's directory or its .safetensors file",
            )
        return _single(path, base=path)
    for name in INDEX_NAMES:
        if (path / name).exists():  # read_bounded refuses one that is not a regular file
            return _from_index(path / name, base=path)
    for name in SINGLE_NAMES:
        if (path / name).exists():  # … and read_header likewise
            return _single(path / name, base=path)
    indexes = sorted(p for p in path.iterdir() if p.name.endswith(INDEX_SUFFIX) and p.is_file())
    singles = sorted(p for p in path.iterdir() if p.suffix == ".safetensors" and p.is_file())
    if len(indexes) == 1:
        return _from_index(indexes[0], base=path)
    if not indexes and len(singles) == 1:
        return _single(singles[0], base=path)
    if indexes or singles:
        names = ", ".join(p.name for p in (indexes or singles)[:SHOWN])
        raise InputError(
            f"{role} {path}: {len(indexes or singles)} candidate checkpoints ({names})",
            hint="name the .safetensors file (or the index) to use",
        )
    pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise _refuse_pickle(pickles[0], role=role)
    raise InputError(
        f"{role} {path}: no safetensors weights here (no model.safetensors, no "
        "model.safetensors.index.json)",
        hint="point --base at a model directory saved with safe_serialization=True",
    )


def _refuse_pickle(path: Path, *, role: str = "--base") -> InputError:
    return InputError(
        f"{role} {path}: pickled checkpoints are never opened (unpickling can run arbitrary code)",
        hint="convert the model to safetensors in a trusted environment, e.g. "
        "AutoModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)",
    )


def _single(file: Path, *, base: Path) -> BaseModel:
    header = read_header(file)
    model = BaseModel(base, shards=dict.fromkeys(header.tensors, file), index=None)
    model._headers[file] = header
    return model


def _from_index(index: Path, *, base: Path) -> BaseModel:
    """Read ``weight_map`` of a sharded checkpoint; shard names must stay in its directory."""
    data = read_bounded(index, what="checkpoint index", limit=MAX_INDEX_BYTES)
    raw = parse_json(data, where=str(index))
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise InputError(
            f"{index}: no weight_map object mapping tensor names to shard files",
            hint="the index is malformed; download the model again",
        )
    directory = index.parent
    shards: dict[str, Path] = {}
    resolved: dict[str, Path] = {}
    for key, name in weight_map.items():
        file = resolved.get(name)
        if file is None:
            file = resolved[name] = _shard_path(index, directory, name)
        shards[key] = file
    if not shards:
        raise InputError(f"{index}: weight_map is empty")
    return BaseModel(base, shards=shards, index=index)


def _shard_path(index: Path, directory: Path, name: str) -> Path:
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or not pure.parts:
        raise InputError(
            f"{index}: shard name {name!r} points outside the model directory",
            hint="the index is malformed or crafted",
        )
    file = directory.joinpath(*pure.parts)
    if file.suffix.lower() in PICKLE_SUFFIXES:
        raise _refuse_pickle(file)
    if file.suffix != ".safetensors":
        raise InputError(f"{index}: shard {name!r} is not a .safetensors file")
    if not file.is_file():
        raise InputError(
            f"{index}: shard {name!r} is missing", hint="download the model's shards again"
        )
    return file


def match_base_weights(adapter: Adapter, base: BaseModel) -> BaseMatch:
    """Find the pretrained weight of every adapted layer (see the module docstring).

    Layers that match no key, match ambiguously, or whose weight has the wrong shape or a
    non-float dtype are listed in :attr:`BaseMatch.unmatched` with the reason; the caller
    decides whether that is an error.
    """
    grouped = next((x for x in adapter.layers if x.conv_groups > 1), None)
    if grouped is not None:
        raise InputError(
            f"{adapter.path}: layer {grouped.name!r} is a LoRA on a grouped convolution "
            f"(groups={grouped.conv_groups}): its ΔW is a dense convolution that does not fit "
            "the base weight, and PEFT cannot merge it either",
            hint="audit this adapter without --base",
        )
    index = _NameIndex(base.keys)
    kohya = adapter.format in {"kohya", "lycoris"}
    fan_in_fan_out = bool(adapter.config.get("fan_in_fan_out", False))
    weights: dict[str, BaseWeight] = {}
    unmatched: list[tuple[str, str]] = []
    taken: dict[str, str] = {}
    for layer in adapter.layers:
        key = index.kohya(layer.name) if kohya else index.dotted(layer.name)
        if key is None:
            unmatched.append((layer.name, "no base weight with this name"))
            continue
        if key in taken:
            unmatched.append((layer.name, f"{key!r} already matched {taken[key]!r}"))
            continue
        file, shape, dtype = base.locate(key)
        if dtype not in FLOAT_DTYPES:
            unmatched.append(
                (layer.name, f"{key!r} is {dtype}, not float (a quantised checkpoint?)")
            )
            continue
        transpose = _orientation(layer, shape, fan_in_fan_out=fan_in_fan_out)
        if transpose is None:
            unmatched.append(
                (
                    layer.name,
                    f"{key!r} has shape {list(shape)}, but ΔW is "
                    f"{[layer.out_features, layer.in_features]}",
                )
            )
            continue
        taken[key] = layer.name
        weights[layer.name] = BaseWeight(
            layer=layer.name,
            key=key,
            file=file,
            stored_shape=shape,
            dtype=dtype,
            transpose=transpose,
        )
    return BaseMatch(weights=weights, unmatched=tuple(unmatched))


def unmatched_error(base: BaseModel, match: BaseMatch, *, layer_count: int) -> InputError:
    """One error naming a few unmatched layers, why, and what the base's keys look like."""
    shown = "; ".join(f"{name} ({why})" for name, why in match.unmatched[:SHOWN])
    more = len(match.unmatched) - SHOWN
    if more > 0:
        shown += f"; … {more} more"
    example = next((k for k in base.keys if k.endswith(".weight")), None)
    keys = f" (base keys look like {example!r})" if example else ""
    return InputError(
        f"--base {base.path}: {len(match.unmatched)} of {layer_count} adapted layers have no "
        f"matching base weight{keys}: {shown}",
        hint="pass the model the adapter was trained on, or --base-partial to audit only the "
        "layers that match",
    )


def unmatched_warning(match: BaseMatch) -> str:
    """The warning ``--base-partial`` gives instead of :func:`unmatched_error`."""
    names = ", ".join(name for name, _ in match.unmatched[:SHOWN])
    more = len(match.unmatched) - SHOWN
    return (
        f"--base: {len(match.unmatched)} layer(s) have no matching base weight and get no "
        f"base-aware metrics: {names}" + (f" and {more} more" if more > 0 else "")
    )


def _orientation(layer: LoraLayer, shape: tuple[int, ...], *, fan_in_fan_out: bool) -> bool | None:
    """``False`` when stored as ``(out, …)``, ``True`` when transposed, ``None`` if it misfits."""
    out, inp = layer.out_features, layer.in_features
    if layer.kind is LayerKind.EMBEDDING:
        return True if tuple(shape) == (inp, out) else None
    if len(shape) < 2:
        return None
    straight = shape[0] == out and math.prod(shape[1:]) == inp
    flipped = len(shape) == 2 and (shape[0], shape[1]) == (inp, out)
    if straight and flipped:  # square: stored orientation is not visible in the shape
        return fan_in_fan_out
    if straight:
        return False
    if flipped and layer.kind is LayerKind.LINEAR:
        return True
    return None


class _NameIndex:
    """Module paths of a checkpoint's ``*.weight`` keys, for the lookups in the docstring."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.modules = {k.removesuffix(".weight"): k for k in keys if k.endswith(".weight")}
        for key in keys:  # nn.MultiheadAttention: PEFT's layer <mha> is <mha>.in_proj_weight
            if key.endswith(".in_proj_weight"):
                self.modules.setdefault(key.removesuffix(".in_proj_weight"), key)
        self._by_last: dict[str, list[str]] = {}
        for module in self.modules:
            self._by_last.setdefault(module.rsplit(".", 1)[-1], []).append(module)
        self._underscored: dict[str, list[str]] | None = None

    def dotted(self, name: str) -> str | None:
        parts = name.split(".")
        last = parts[-1]
        for drop in range(max(1, len(parts) - 1)):
            candidate = ".".join(parts[drop:])
            if candidate in self.modules:
                return self.modules[candidate]
            suffix = "." + candidate
            hits = [m for m in self._by_last.get(last, ()) if m.endswith(suffix)]
            if len(hits) == 1:
                return self.modules[hits[0]]
            if len(hits) > 1:
                return None  # ambiguous: several prefixed copies of this module
        return None

    def kohya(self, name: str) -> str | None:
        if self._underscored is None:
            self._underscored = {}
            for module in self.modules:
                self._underscored.setdefault(module.replace(".", "_"), []).append(module)
        rest = _KOHYA_PREFIX.sub("", name)
        for candidate in dict.fromkeys((rest, name.replace(".", "_"))):
            exact = self._underscored.get(candidate, [])
            if len(exact) == 1:
                return self.modules[exact[0]]
            if len(exact) > 1:
                return None
        suffix = "_" + rest
        hits = [m for u, ms in self._underscored.items() if u.endswith(suffix) for m in ms]
        return self.modules[hits[0]] if len(hits) == 1 else None


def magnitude_key(layer: LoraLayer) -> str | None:
    """The key of a PEFT DoRA layer's ``lora_magnitude_vector``, if it has one."""
    return next((k for k in layer.extra_keys if "lora_magnitude_vector" in k), None)


def describe(base: BaseModel) -> dict[str, Any]:
    """Where the base came from, for the report: its path, index and files."""
    return {
        "path": str(base.path),
        "index": None if base.index is None else str(base.index),
        "files": [str(f) for f in base.files],
    }
