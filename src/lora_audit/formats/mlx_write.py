"""Writing a compressed mlx-lm adapter that ``mlx_lm``'s ``load_adapters`` loads.

mlx-lm builds every LoRA layer with the one rank ``lora_parameters.rank`` and checks each
stored tensor's shape against it, so a compressed mlx-lm adapter must give every layer the
same rank: all layers truncated to one ``k`` (``compress --rank k``), or none. The output is
a directory like the trainer's: ``adapters.safetensors`` with the same keys and mlx-lm's
orientation (``lora_a`` (in, k), ``lora_b`` (k, out); SwitchLinear experts stacked
(E, k, in) / (E, out, k)), and ``adapter_config.json`` with ``lora_parameters.rank = k`` and
``scale = 1`` (the scale is baked into the factors, as for PEFT). Everything else in the
config, and every other tensor (DoRA ``m``), is kept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_audit.adapter import Adapter
from lora_audit.errors import UsageError
from lora_audit.formats.mlx import CONFIG_NAME, WEIGHTS_NAME
from lora_audit.formats.one_rank import require_one_rank
from lora_audit.formats.safetensors_io import (
    DTYPE_SIZES,
    SafetensorsSource,
    StoredTensor,
    write_safetensors,
)
from lora_audit.formats.stacked import split_sliced

if TYPE_CHECKING:
    from lora_audit.formats.writer import NewLayer


def check_ranks(adapter: Adapter, new_layers: Mapping[str, NewLayer]) -> int | None:
    """The one new rank of every layer (``None``: nothing is rewritten).

    Raises
    ------
    UsageError
        Without the run's ``adapter_config.json``, or when the layers would get different
        ranks (mlx-lm could not load the result).
    """
    if not adapter.config:
        raise UsageError(
            f"{adapter.path}: an mlx-lm adapter without adapter_config.json",
            hint="compress the directory mlx_lm.lora wrote (it needs the config to write one "
            "mlx-lm loads)",
        )
    if not new_layers:
        return None
    new_ranks = {name: new.rank for name, new in new_layers.items()}
    return require_one_rank(adapter, new_ranks, loader="mlx-lm (lora_parameters.rank)")


def mlx_files(
    adapter: Adapter, new_layers: Mapping[str, NewLayer]
) -> tuple[dict[str, StoredTensor], dict[str, Any]]:
    """The tensors of ``adapters.safetensors`` and the ``adapter_config.json`` to write."""
    rank = check_ranks(adapter, new_layers)
    source = adapter.source
    stored = getattr(source, "stored", None)
    assert isinstance(stored, SafetensorsSource)
    tensors: dict[str, StoredTensor] = {}
    experts: dict[str, dict[int, StoredTensor]] = {}
    replaced: set[str] = set()
    for layer in adapter.layers:
        new = new_layers.get(layer.name)
        if new is None:
            continue
        for key, tensor in ((layer.a_key, new.a), (layer.b_key, new.b)):
            real, index = split_sliced(key)
            replaced.add(real)
            if index is None:
                tensors[real] = _transpose(tensor)  # mlx-lm: lora_a (in, k), lora_b (k, out)
            else:
                experts.setdefault(real, {})[index] = tensor
    for real, parts in experts.items():
        tensors[real] = _stack(real, parts, count=stored.header.tensors[real].shape[0])
    for key in stored.header.tensors:
        if key not in replaced:
            tensors[key] = stored.raw(key)
    config = json.loads(json.dumps(dict(adapter.config)))
    if rank is not None:
        config["lora_parameters"] = {**config["lora_parameters"], "rank": rank, "scale": 1.0}
    return tensors, config


def write_mlx(
    adapter: Adapter,
    new_layers: Mapping[str, NewLayer],
    *,
    directory: Path,
    metadata: Mapping[str, str],
    write_plain: Any,
) -> Path:
    """Write the two files into ``directory`` (a fresh temporary directory); the tensor file."""
    tensors, config = mlx_files(adapter, new_layers)
    meta = {"format": "mlx", **metadata}
    write_plain(directory / WEIGHTS_NAME, lambda fh: write_safetensors(fh, tensors, metadata=meta))
    write_plain(directory / CONFIG_NAME, (json.dumps(config, indent=4) + "\n").encode("utf-8"))
    return directory / WEIGHTS_NAME


def _elements(tensor: StoredTensor) -> Any:
    import numpy as np

    unsigned = {1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}[DTYPE_SIZES[tensor.dtype]]
    return np.frombuffer(memoryview(tensor.data).cast("B"), dtype=unsigned).reshape(tensor.shape)


def _transpose(tensor: StoredTensor) -> StoredTensor:
    """The same values transposed (bit patterns moved, never converted)."""
    import numpy as np

    data = np.ascontiguousarray(_elements(tensor).T)
    return StoredTensor(dtype=tensor.dtype, shape=tuple(reversed(tensor.shape)), data=data)


def _stack(key: str, parts: Mapping[int, StoredTensor], *, count: int) -> StoredTensor:
    """Experts ``0 … count-1`` stacked into one (E, …) tensor."""
    import numpy as np

    if sorted(parts) != list(range(count)):
        raise UsageError(f"{key}: only some of its {count} experts were rewritten")
    first = parts[0]
    data = np.stack([_elements(parts[e]) for e in range(count)])
    return StoredTensor(dtype=first.dtype, shape=(count, *first.shape), data=data)
