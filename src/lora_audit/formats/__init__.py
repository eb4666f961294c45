"""On-disk adapter formats: find the files a path refers to, detect the format, read it.

Only safetensors is ever read. Pickled checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``)
are refused without being opened, because unpickling runs arbitrary code.
"""

from __future__ import annotations

from pathlib import Path

from lora_audit.adapter import Adapter
from lora_audit.errors import InputError
from lora_audit.formats.diffusers_metadata import component_configs, read_pipeline
from lora_audit.formats.kohya import has_module_alphas, looks_like_kohya, read_kohya
from lora_audit.formats.peft import CONFIG_NAME, WEIGHTS_NAME, looks_like_peft, read_peft
from lora_audit.formats.safetensors_io import Header, read_header
from lora_audit.formats.work_bounds import check_work_bounded
from lora_audit.formats.xlabs import looks_like_xlabs, read_xlabs

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})

#: Values of ``--input-format``: ``peft``, or ``kohya`` for every single-file SD format
#: (kohya / sd-scripts, LyCORIS, diffusers attention processors).
INPUT_FORMATS = ("auto", "peft", "kohya")

__all__ = ["INPUT_FORMATS", "PICKLE_SUFFIXES", "load_adapter", "resolve_files"]


def _refuse_pickle(path: Path) -> InputError:
    return InputError(
        f"{path}: pickled checkpoints are never opened (unpickling can run arbitrary code)",
        hint="convert it to safetensors in a trusted environment, e.g. "
        "PeftModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)",
    )


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
            raise _refuse_pickle(path)
        config = path.parent / CONFIG_NAME
        return path, (config if path.name == WEIGHTS_NAME and _present(config) else None)
    if not path.is_dir():
        raise InputError(f"{path}: not a regular file or directory")
    weights = path / WEIGHTS_NAME
    config = path / CONFIG_NAME
    if weights.is_file():
        return weights, (config if _present(config) else None)
    pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise _refuse_pickle(pickles[0])
    candidates = sorted(p for p in path.iterdir() if p.suffix == ".safetensors" and p.is_file())
    candidates += sorted(d / WEIGHTS_NAME for d in path.iterdir() if (d / WEIGHTS_NAME).is_file())
    if len(candidates) == 1:
        found = candidates[0]
        sibling = found.parent / CONFIG_NAME
        return found, (sibling if found.name == WEIGHTS_NAME and _present(sibling) else None)
    if not candidates:
        raise InputError(
            f"{path}: no adapter here (no {WEIGHTS_NAME} and no .safetensors file)",
            hint="point at a PEFT adapter directory or a .safetensors file",
        )
    names = ", ".join(str(c.relative_to(path)) for c in candidates[:5])
    raise InputError(
        f"{path}: {len(candidates)} candidate adapters ({names})",
        hint="name the one to read",
    )


def _single_file_sd(header: Header) -> bool:
    """A file without ``adapter_config.json`` that the kohya reader reads, not the PEFT one.

    ``lora_A`` keys alone do not make a file PEFT: ComfyUI-style files keep a per-module
    ``.alpha`` beside them, which PEFT never writes. XLabs (x-flux) files are read by their
    own reader (``--input-format kohya`` covers them too).
    """
    if has_module_alphas(header) or looks_like_xlabs(header):
        return True
    return not looks_like_peft(header) and looks_like_kohya(header)


def _present(config: Path) -> bool:
    """Whether anything is at ``config``: a FIFO, device or directory there is read, and
    refused, rather than taken for a missing config (:mod:`~lora_audit.formats.config_files`).
    """
    return config.exists() or config.is_symlink()


def load_adapter(path: Path, *, alpha: float | None = None, input_format: str = "auto") -> Adapter:
    """Read the adapter at ``path`` (a directory or a ``.safetensors`` file).

    Parameters
    ----------
    path
        A PEFT adapter directory, or a ``.safetensors`` file in any supported format.
    alpha
        PEFT: ``lora_alpha`` to use when neither a config nor the file header gives one.
    input_format
        ``auto`` detects the format from the keys (and ``adapter_config.json``); ``peft`` or
        ``kohya`` force one.

    Raises
    ------
    InputError
        When the path holds no readable, valid adapter.
    """
    tensor_file, config_file = resolve_files(path)
    header = read_header(tensor_file)
    adapter = _read(
        path=path,
        tensor_file=tensor_file,
        config_file=config_file,
        header=header,
        alpha=alpha,
        fmt=input_format,
    )
    check_work_bounded(adapter, header=header, file_size=tensor_file.stat().st_size)
    return adapter


def _read(
    *,
    path: Path,
    tensor_file: Path,
    config_file: Path | None,
    header: Header,
    alpha: float | None,
    fmt: str,
) -> Adapter:
    """The reader that ``fmt`` (or, for ``auto``, the keys and config) names, applied."""
    configs = component_configs(header, where=str(tensor_file)) if config_file is None else None
    if configs and fmt in {"auto", "peft"}:  # diffusers save_lora_weights: one config a component
        return read_pipeline(
            path=path, tensor_file=tensor_file, header=header, configs=configs, alpha=alpha
        )
    if fmt == "auto":
        fmt = "kohya" if config_file is None and _single_file_sd(header) else "peft"
    if fmt == "kohya" and looks_like_xlabs(header):
        return read_xlabs(path=path, tensor_file=tensor_file, header=header)
    if fmt == "kohya":
        return read_kohya(path=path, tensor_file=tensor_file, header=header)
    return read_peft(
        path=path, tensor_file=tensor_file, config_file=config_file, alpha=alpha, header=header
    )
