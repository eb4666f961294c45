"""mlx-lm adapters: ``adapters.safetensors`` + ``adapter_config.json`` (``mlx_lm.lora``).

Read as mlx-lm 0.32's ``load_adapters`` / ``linear_to_lora_layers`` apply them
(``mlx_lm/tuner/lora.py``, ``dora.py``):

* ``LoRALinear`` / ``DoRALinear``: ``<module>.lora_a`` (in, r), ``<module>.lora_b`` (r, out);
  ``ΔW = scale · lora_bᵀ · lora_aᵀ`` of shape (out, in) — so ``B = lora_bᵀ``, ``A = lora_aᵀ``.
  DoRA adds ``<module>.m`` (out,), passed through.
* ``LoRAEmbedding``: the same two tensors, ``lora_a`` (vocab, r), ``lora_b`` (r, dims), and
  ``ΔE = scale · lora_a · lora_b`` of shape (vocab, dims): the embedding convention of
  :mod:`lora_audit.adapter` with the same ``B``, ``A``. Told apart from a Linear by the module
  name (``embed_tokens``, ``wte``, …); the spectrum is the same either way.
* ``LoRASwitchLinear`` (MoE): ``lora_a`` (E, r, in), ``lora_b`` (E, out, r), not transposed;
  expert ``e`` is ``scale · lora_b[e] · lora_a[e]``, reported as the layer ``<module>[e]``.
* Fused projections (``FusedLoRALinear``): lists ``lora_a.<i>`` / ``lora_b.<i>``, one LoRA per
  output slice ``i``, reported as ``<module>[i]``.

The scale is ``lora_parameters.scale`` of the config (mlx-lm has no alpha: the scale is used as
is) and every layer's rank must be ``lora_parameters.rank``, as mlx-lm's loader checks. The
numbered checkpoints the trainer writes beside the final file (``0000100_adapters.safetensors``)
are read the same way when named.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_audit.adapter import (
    Adapter,
    LayerKind,
    LoraLayer,
    ScaleSource,
    TensorSource,
    natural_key,
)
from lora_audit.choices import AdapterFormat
from lora_audit.errors import InputError
from lora_audit.formats.config_files import load_json_file
from lora_audit.formats.safetensors_io import (
    FLOAT_DTYPES,
    Header,
    SafetensorsSource,
    TensorInfo,
)
from lora_audit.formats.stacked import sliced, split_sliced

if TYPE_CHECKING:
    import numpy.typing as npt

WEIGHTS_NAME = "adapters.safetensors"
CONFIG_NAME = "adapter_config.json"
#: mlx-lm's default ``lora_parameters.scale`` (``mlx_lm/lora.py`` CONFIG_DEFAULTS).
DEFAULT_SCALE = 20.0

_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?P<side>[ab])(?:\.(?P<part>\d+))?$")
_MAGNITUDE = re.compile(r"^(?P<module>.+)\.m$")
_EMBEDDING_NAMES = frozenset({"embed_tokens", "wte", "tok_embeddings", "word_embeddings"})


class MlxSource:
    """The factors of an mlx-lm file in the ``B (out, r)`` / ``A (r, in)`` orientation.

    ``stored`` gives the tensors as saved: the file (:class:`SafetensorsSource`), or a
    training run's arrays in memory (:mod:`lora_audit.integrations.mlx_lm`).

    ``get(key)`` of a 2-D ``lora_a``/``lora_b`` returns its transpose; ``get("<key>[e]")``
    returns slice ``e`` of a stacked tensor; other keys come back as stored. Arrays are numpy
    (BF16 widened to float32).
    """

    def __init__(self, stored: TensorSource) -> None:
        self.stored = stored

    def get(self, key: str) -> npt.NDArray[Any]:
        """The factor (or stored tensor) ``key`` as described above."""
        stored, index = split_sliced(key)
        array = self.stored.get(stored)
        if index is not None:
            part: npt.NDArray[Any] = array[index]
            return part
        if _FACTOR.match(stored) and array.ndim == 2:
            return array.T
        return array


def is_mlx_config(raw: Mapping[str, Any]) -> bool:
    """True for the ``adapter_config.json`` that ``mlx_lm.lora`` writes."""
    return "lora_parameters" in raw or "fine_tune_type" in raw


def is_mlx_config_file(path: Path) -> bool:
    """True when ``path`` holds an mlx-lm config (False when unreadable: other readers say why)."""
    try:
        raw = load_json_file(path, what="adapter config")
    except InputError:
        return False
    return isinstance(raw, dict) and is_mlx_config(raw)


def looks_like_mlx(header: Header) -> bool:
    """True when the keys are mlx-lm factors (``….lora_a`` / ``….lora_b``)."""
    return any(_FACTOR.match(k) for k in header.tensors)


def read_config(path: Path) -> dict[str, Any]:
    """The JSON object of an ``adapter_config.json``."""
    raw = load_json_file(path, what="adapter config")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: must contain a JSON object")
    return raw


def _scale_and_rank(
    config: Mapping[str, Any] | None, *, where: str, alpha: float | None
) -> tuple[float | None, ScaleSource, int | None, list[str]]:
    """``(scale, its source, config rank, warnings)``; scale ``None``: ``alpha / r`` per layer."""
    if config is None:
        if alpha is not None:
            return None, "option", None, []
        return (
            DEFAULT_SCALE,
            "assumed",
            None,
            [
                f"{where}: mlx-lm adapter without adapter_config.json; assuming mlx-lm's "
                f"default scale {DEFAULT_SCALE:g} (pass --alpha to use scale alpha/r instead)"
            ],
        )
    kind = config.get("fine_tune_type", "lora")
    if kind == "full":
        raise InputError(
            f"{where}: an mlx-lm full fine-tune (fine_tune_type 'full'): the file holds whole "
            "weights, not low-rank factors",
            hint="only LoRA and DoRA runs of mlx_lm.lora can be audited",
        )
    if kind not in {"lora", "dora"}:
        raise InputError(f"{where}: fine_tune_type {kind!r} is not one mlx-lm 0.32 knows")
    params = config.get("lora_parameters")
    if not isinstance(params, dict) or "scale" not in params:
        raise InputError(
            f"{where}: lora_parameters has no 'scale'",
            hint="mlx-lm refuses such a config too (it uses 'scale', not 'alpha'); add the "
            "scale the run was trained with",
        )
    scale, rank = params["scale"], params.get("rank")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise InputError(f"{where}: lora_parameters.scale = {scale!r} must be a finite number")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise InputError(f"{where}: lora_parameters.rank = {rank!r} must be a positive integer")
    return float(scale), "config", rank, []


def read_mlx(
    *,
    path: Path,
    tensor_file: Path,
    config_file: Path | None,
    header: Header,
    alpha: float | None,
) -> Adapter:
    """Read an mlx-lm LoRA or DoRA adapter.

    Parameters
    ----------
    config_file
        mlx-lm's ``adapter_config.json``; without it the scale is assumed (with a warning).
    alpha
        ``--alpha``: only without a config, scale ``alpha / r``.

    Raises
    ------
    InputError
        For a full fine-tune, a config without a scale, a rank other than the config's, or
        factors that do not pair up.
    """
    config = read_config(config_file) if config_file is not None else None
    return mlx_adapter(
        path=path,
        tensor_file=tensor_file,
        config=config,
        where=str(config_file or tensor_file),
        header=header,
        alpha=alpha,
        stored=SafetensorsSource(tensor_file, header),
    )


def mlx_adapter(
    *,
    path: Path,
    tensor_file: Path,
    config: Mapping[str, Any] | None,
    where: str,
    header: Header,
    alpha: float | None,
    stored: TensorSource,
) -> Adapter:
    """An mlx-lm adapter from its config and tensors, as :func:`read_mlx` reads the files.

    ``header`` lists the tensors as saved (names, dtypes, shapes); ``stored`` gives them. A
    training run in memory (:mod:`lora_audit.integrations.mlx_lm`) passes the arrays it
    would save, so its report is that of the saved file.
    """
    scale, source, config_rank, warnings = _scale_and_rank(config, where=where, alpha=alpha)
    pairs: dict[tuple[str, str | None], dict[str, str]] = {}
    magnitudes: dict[str, str] = {}
    passthrough: list[str] = []
    for key in header.tensors:
        if m := _FACTOR.match(key):
            pairs.setdefault((m["module"], m["part"]), {})[m["side"]] = key
        elif m := _MAGNITUDE.match(key):
            magnitudes[m["module"]] = key
            passthrough.append(key)
        else:
            passthrough.append(key)
    layers: list[LoraLayer] = []
    for (module, part), sides in pairs.items():
        if len(sides) != 2:
            only = next(iter(sides.values()))
            raise InputError(
                f"{tensor_file}: {module}: {only!r} has no partner",
                hint="every lora_a needs its lora_b; the file is incomplete",
            )
        name = module if part is None else sliced(module, int(part))
        layers += _layers(
            name=name,
            a_key=sides["a"],
            b_key=sides["b"],
            a=header.tensors[sides["a"]],
            b=header.tensors[sides["b"]],
            magnitude=magnitudes.get(module),
            scale=scale,
            source=source,
            alpha=alpha,
            tensor_file=tensor_file,
        )
    if not layers:
        raise InputError(f"{tensor_file}: no lora_a/lora_b factors in this mlx-lm file")
    if config_rank is not None:
        wrong = next((x for x in layers if x.rank != config_rank), None)
        if wrong is not None:
            raise InputError(
                f"{where}: layer {wrong.name!r} has rank {wrong.rank} but lora_parameters.rank "
                f"is {config_rank}",
                hint="mlx-lm would refuse to load it; use the adapter_config.json of this run",
            )
    layers.sort(key=lambda layer: natural_key(layer.name))
    return Adapter(
        path=path,
        tensor_file=tensor_file,
        format=AdapterFormat.MLX,
        layers=tuple(layers),
        passthrough_keys=tuple(passthrough),
        config=config or {},
        metadata=header.metadata,
        base_model=str(config["model"]) if config and config.get("model") else None,
        warnings=tuple(warnings),
        source=MlxSource(stored),
    )


def _layers(
    *,
    name: str,
    a_key: str,
    b_key: str,
    a: TensorInfo,
    b: TensorInfo,
    magnitude: str | None,
    scale: float | None,
    source: ScaleSource,
    alpha: float | None,
    tensor_file: Path,
) -> list[LoraLayer]:
    """One layer (2-D factors) or one per expert (3-D ``LoRASwitchLinear`` factors)."""
    for key, info in ((a_key, a), (b_key, b)):
        if info.dtype not in FLOAT_DTYPES:
            raise InputError(f"{tensor_file}: tensor {key!r} has dtype {info.dtype}, not float")
        if 0 in info.shape or len(info.shape) not in (2, 3) or len(info.shape) != len(a.shape):
            raise InputError(f"{tensor_file}: tensor {key!r} has shape {list(info.shape)}")
    if len(a.shape) == 2:
        (inp, rank), (rank_b, out) = a.shape, b.shape
        experts: list[int | None] = [None]
    else:
        (n, rank, inp), (n_b, out, rank_b) = a.shape, b.shape
        experts = list(range(n)) if n == n_b else []
    if rank != rank_b or not experts:
        raise InputError(
            f"{tensor_file}: {name}: lora_a {list(a.shape)} and lora_b {list(b.shape)} do not "
            "fit (mlx-lm: lora_a (in, r), lora_b (r, out); SwitchLinear: (E, r, in), (E, out, r))"
        )
    embedding = len(a.shape) == 2 and name.rsplit(".", 1)[-1] in _EMBEDDING_NAMES
    if scale is None:
        assert alpha is not None
        scale = alpha / rank
    layers = []
    for e in experts:
        layers.append(
            LoraLayer(
                name=name if e is None else sliced(name, e),
                kind=LayerKind.EMBEDDING if embedding else LayerKind.LINEAR,
                a_key=a_key if e is None else sliced(a_key, e),
                b_key=b_key if e is None else sliced(b_key, e),
                a_shape=(rank, inp),
                b_shape=(out, rank),
                out_features=out,
                in_features=inp,
                rank=rank,
                alpha=alpha if source == "option" else None,
                scale=scale,
                dtype=a.dtype if a.dtype == b.dtype else f"{b.dtype}/{a.dtype}",
                weight_shape=(inp, out) if embedding else (out, inp),
                extra_keys=() if magnitude is None else (magnitude,),
                dora=magnitude is not None,
                scale_source=source,
            )
        )
    return layers
