"""On-disk adapter formats: find the files a path refers to, detect the format, read it.

Which reader reads a file is decided by the registry (:mod:`lora_audit.formats.registry`:
its ``READERS`` are the detection order, and it checks every read adapter).

Safetensors and GGUF are read; what a file is comes from its first bytes
(:mod:`lora_audit.formats.sniff`). Pickled checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``)
are refused without being opened, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from lora_audit.adapter import Adapter
from lora_audit.choices import InputFormatName, input_format_name
from lora_audit.errors import InputError
from lora_audit.formats import mlx, registry, sniff
from lora_audit.formats.diffusers_metadata import component_configs
from lora_audit.formats.peft import CONFIG_NAME, WEIGHTS_NAME
from lora_audit.formats.protocols import Probe
from lora_audit.formats.safetensors_io import read_header

#: Tensor files that ``adapter_config.json`` beside them describes: PEFT's, and mlx-lm's final
#: file and the numbered checkpoints its trainer writes beside it.
_CONFIGURED = re.compile(rf"^(?:{re.escape(WEIGHTS_NAME)}|(?:\d+_)?{re.escape(mlx.WEIGHTS_NAME)})$")

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})

#: Values of ``--input-format``: ``peft``, ``kohya`` for every single-file SD format
#: (kohya / sd-scripts, LyCORIS, diffusers attention processors), or ``mlx`` (mlx-lm). GGUF is
#: told by its magic bytes. Defined in :mod:`lora_audit.choices`.
INPUT_FORMATS: tuple[str, ...] = get_args(InputFormatName)

__all__ = ["INPUT_FORMATS", "PICKLE_SUFFIXES", "holds_adapter", "load_adapter", "resolve_files"]


def _refuse_pickle(path: Path) -> InputError:
    return sniff.pickle_error(path)


def _with_config(found: Path) -> tuple[Path, Path | None]:
    config = found.parent / CONFIG_NAME
    return found, (config if _CONFIGURED.match(found.name) and _present(config) else None)


def _present(config: Path) -> bool:
    """Whether anything is at ``config``: a FIFO, device or directory there is read, and
    refused, rather than taken for a missing config (:mod:`~lora_audit.formats.config_files`).
    """
    return config.exists() or config.is_symlink()


#: Files of a full model's directory (transformers, diffusers), never of an adapter's.
_MODEL_FILES = re.compile(
    r"^(?:model\.safetensors|pytorch_model\.bin|tf_model\.h5|flax_model\.msgpack"
    r"|(?:model|pytorch_model)\.(?:safetensors|bin)\.index\.json"
    r"|(?:model|pytorch_model)-\d{5}-of-\d{5}\.(?:safetensors|bin)|model_index\.json)$"
)


def _full_model(directory: Path) -> InputError | None:
    """The refusal for a directory that holds a full model rather than an adapter, if it does.

    A full model is told by its weight files (``model.safetensors``, shards such as
    ``model-00001-of-00002.safetensors``, an index, ``pytorch_model.bin``) beside a
    ``config.json``, or by shards or a diffusers ``model_index.json`` alone; a directory
    with an ``adapter_config.json`` is never one.
    """
    names = set(_names(directory))
    if CONFIG_NAME in names:
        return None
    weights = sorted(n for n in names if _MODEL_FILES.match(n))
    sharded = any("-of-" in n or n.endswith(".index.json") for n in weights)
    if not weights or not ("config.json" in names or sharded or "model_index.json" in names):
        return None
    shown = ", ".join((["config.json"] if "config.json" in names else []) + weights[:2])
    return InputError(
        f"{directory}: this looks like a full model ({shown}), not a LoRA adapter",
        hint="pass the adapter instead (a directory with adapter_config.json, or the "
        "adapter's .safetensors file); to measure an adapter against this model, add "
        f"--base {directory}; to audit this model as a full fine-tune, add --base BASE "
        "(docs/full-finetune.md)",
    )


def _names(directory: Path) -> list[str]:
    try:
        return [entry.name for entry in directory.iterdir()]
    except OSError:
        return []


def resolve_files(path: Path) -> tuple[Path, Path | None]:
    """Find the tensor file and the config file that ``path`` refers to.

    Returns
    -------
    tensor_file, config_file
        ``config_file`` is ``None`` when there is no ``adapter_config.json``.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            kind = sniff.sniff(path)  # a .bin may be a legacy llama.cpp LoRA, …
            raise sniff.refuse_container(path, kind) or sniff.pickle_error(path, kind=kind)
        return _with_config(path)
    if not path.is_dir():
        raise InputError(f"{path}: not a regular file or directory")
    for name in (WEIGHTS_NAME, mlx.WEIGHTS_NAME):  # mlx-lm: not its numbered checkpoints
        if (path / name).is_file():
            return _with_config(path / name)
    if (refusal := _full_model(path)) is not None:
        raise refusal
    pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise _refuse_pickle(pickles[0])
    candidates = sorted(
        p for p in path.iterdir() if p.suffix in {".safetensors", ".gguf"} and p.is_file()
    )
    candidates += sorted(d / WEIGHTS_NAME for d in path.iterdir() if (d / WEIGHTS_NAME).is_file())
    if len(candidates) == 1:
        return _with_config(candidates[0])
    if not candidates:
        raise InputError(
            f"{path}: no adapter here (no {WEIGHTS_NAME}, {mlx.WEIGHTS_NAME}, .safetensors or "
            ".gguf file)",
            hint="point at a PEFT or mlx-lm adapter directory, or a .safetensors or .gguf file",
        )
    names = ", ".join(str(c.relative_to(path)) for c in candidates[:5])
    raise InputError(
        f"{path}: {len(candidates)} candidate adapters ({names})",
        hint="name the one to read",
    )


def load_adapter(path: Path, *, alpha: float | None = None, input_format: str = "auto") -> Adapter:
    """Read the adapter at ``path`` (a directory or a ``.safetensors`` file).

    Parameters
    ----------
    path
        A PEFT or mlx-lm adapter directory, a ``.safetensors`` file in any supported format,
        or a llama.cpp GGUF LoRA adapter.
    alpha
        ``lora_alpha`` to use when neither a config nor the file gives a scale.
    input_format
        ``auto`` detects the format from the keys (and ``adapter_config.json``); ``peft`` or
        ``kohya`` force one.

    Raises
    ------
    InputError
        When the path holds no readable, valid adapter, or a tensor named like a LoRA
        factor that is part of no layer read (:func:`~lora_audit.formats.accounted.
        check_accounted`).
    UsageError
        When ``input_format`` is not one of :data:`INPUT_FORMATS`.
    """
    fmt = input_format_name(input_format)
    tensor_file, config_file = resolve_files(path)
    found = registry.probe(
        path=path, tensor_file=tensor_file, config_file=config_file, forced=fmt, alpha=alpha
    )
    return registry.read(found)


def holds_adapter(tensor_file: Path) -> bool:
    """Whether a ``.safetensors`` file read alone (no config beside it) holds LoRA factors
    that a reader here knows, judged from its header only (no tensor is read).

    Raises
    ------
    InputError
        When the header cannot be read (a truncated or corrupt file).
    """
    header = read_header(tensor_file)
    found = Probe(
        path=tensor_file,
        tensor_file=tensor_file,
        config_file=None,
        kind="safetensors",
        header=header,
        configs=component_configs(header, where=str(tensor_file)),
    )
    return registry.claimed(found)
