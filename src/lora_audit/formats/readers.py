"""The readers of the registry: when each claims a file, and which module reads it.

Each class is a :class:`~lora_audit.formats.protocols.FormatReader` over one reader module
(its ``read_*`` function and its key patterns). The order in which they are asked is
:data:`lora_audit.formats.registry.READERS`; a reader's :meth:`claims` is written for that
place in the order (it can count on the readers before it not having claimed the file).
"""

from __future__ import annotations

from lora_audit.adapter import Adapter
from lora_audit.choices import AdapterFormat, InputFormat
from lora_audit.errors import InputError
from lora_audit.formats import mlx, sniff
from lora_audit.formats.diffusers_metadata import METADATA_KEY, read_pipeline
from lora_audit.formats.kohya import (
    has_diffusers_names,
    has_module_alphas,
    looks_like_kohya,
    read_kohya,
)
from lora_audit.formats.peft import looks_like_peft, read_peft
from lora_audit.formats.protocols import Probe
from lora_audit.formats.safetensors_io import Header
from lora_audit.formats.xlabs import looks_like_xlabs, read_xlabs

__all__ = [
    "DiffusersPipelineReader",
    "GgufReader",
    "KohyaReader",
    "MlxReader",
    "PeftReader",
    "XlabsReader",
    "single_file_sd",
]

_F = AdapterFormat


class GgufReader:
    """llama.cpp GGUF LoRA adapters, told by their magic bytes whatever ``--input-format``."""

    formats = frozenset({_F.GGUF})
    choice: InputFormat | None = None

    def claims(self, probe: Probe) -> bool:
        return probe.kind == "gguf"

    def refusal(self, probe: Probe) -> InputError | None:
        return None

    def read(self, probe: Probe) -> Adapter:
        from lora_audit.formats.gguf import read_gguf  # the gguf package, only for GGUF

        return read_gguf(path=probe.path, tensor_file=probe.tensor_file, alpha=probe.alpha)


class DiffusersPipelineReader:
    """diffusers ``save_lora_weights`` files with one LoRA config per component in the header.

    The configs choose it (under ``auto`` or a forced ``peft``); a forced ``kohya`` or ``mlx``
    passes it by, and is then refused for the scales in those configs.
    """

    formats = frozenset({_F.DIFFUSERS_PIPELINE})
    choice: InputFormat | None = None

    def claims(self, probe: Probe) -> bool:
        return bool(probe.configs) and probe.forced in {InputFormat.AUTO, InputFormat.PEFT}

    def refusal(self, probe: Probe) -> InputError | None:
        return None

    def read(self, probe: Probe) -> Adapter:
        assert probe.configs
        return read_pipeline(
            path=probe.path,
            tensor_file=probe.tensor_file,
            header=probe.tensors_header,
            configs=probe.configs,
            alpha=probe.alpha,
        )


class MlxReader:
    """mlx-lm adapters: by the ``adapter_config.json`` ``mlx_lm.lora`` writes (``by_keys``
    off), or, last of all, by ``….lora_a``/``….lora_b`` keys in a file alone (``by_keys``)."""

    formats = frozenset({_F.MLX})
    choice: InputFormat | None = InputFormat.MLX

    def __init__(self, *, by_keys: bool) -> None:
        self.by_keys = by_keys

    def claims(self, probe: Probe) -> bool:
        if self.by_keys:
            return probe.detecting() and mlx.looks_like_mlx(probe.tensors_header)
        return probe.forced == InputFormat.MLX or (probe.detecting() and probe.mlx_config)

    def refusal(self, probe: Probe) -> InputError | None:
        return None

    def read(self, probe: Probe) -> Adapter:
        return mlx.read_mlx(
            path=probe.path,
            tensor_file=probe.tensor_file,
            config_file=probe.config_file if probe.mlx_config else None,
            header=probe.tensors_header,
            alpha=probe.alpha,
        )


def single_file_sd(header: Header) -> bool:
    """A file without ``adapter_config.json`` that the kohya reader reads, not the PEFT one.

    ``lora_A`` keys alone do not make a file PEFT: ComfyUI-style files keep a per-module
    ``.alpha`` beside them, which PEFT never writes; diffusers' own files name attention
    factors ``.lora.down``/``.up`` beside ``lora_A``/``lora_B`` for the other modules. XLabs
    (x-flux) files are read by their own reader (``--input-format kohya`` covers them too).
    """
    if has_module_alphas(header) or looks_like_xlabs(header):
        return True
    if has_diffusers_names(header) and METADATA_KEY not in header.metadata:
        return True  # diffusers' mixed names (a model-level config: the PEFT reader's)
    return not looks_like_peft(header) and looks_like_kohya(header)


def _sd_detected(probe: Probe) -> bool:
    return probe.detecting() and probe.config_file is None and single_file_sd(probe.tensors_header)


def _sd_refusal(probe: Probe) -> InputError | None:
    """A detected single-file SD file with no factor (a GLoRA or full-diff file has
    kohya-style ``.alpha`` keys): refused by what it is."""
    keys = probe.tensors_header.tensors
    if probe.detecting() and sniff.not_lora(keys):
        return sniff.no_factors_error(probe.tensor_file, keys)
    return None


class XlabsReader:
    """XLabs (x-flux) Flux files: the single-file SD branch, before kohya."""

    formats = frozenset({_F.XLABS})
    choice: InputFormat | None = InputFormat.KOHYA

    def claims(self, probe: Probe) -> bool:
        header = probe.tensors_header
        forced = probe.forced == InputFormat.KOHYA
        return (forced or _sd_detected(probe)) and looks_like_xlabs(header)

    def refusal(self, probe: Probe) -> InputError | None:
        return _sd_refusal(probe)

    def read(self, probe: Probe) -> Adapter:
        return read_xlabs(
            path=probe.path, tensor_file=probe.tensor_file, header=probe.tensors_header
        )


class KohyaReader:
    """Every other single-file SD format: kohya / sd-scripts, LyCORIS, ComfyUI-style,
    diffusers attention processors (which of them: the adapter's ``format``)."""

    formats = frozenset({_F.KOHYA, _F.LYCORIS, _F.COMFYUI, _F.DIFFUSERS})
    choice: InputFormat | None = InputFormat.KOHYA

    def claims(self, probe: Probe) -> bool:
        return probe.forced == InputFormat.KOHYA or _sd_detected(probe)

    def refusal(self, probe: Probe) -> InputError | None:
        return _sd_refusal(probe)

    def read(self, probe: Probe) -> Adapter:
        return read_kohya(
            path=probe.path, tensor_file=probe.tensor_file, header=probe.tensors_header
        )


class PeftReader:
    """PEFT (LoRA, DoRA, LoHa, LoKr, AdaLoRA): any file with an ``adapter_config.json`` that
    no reader before claimed, or PEFT's keys in a file alone."""

    formats = frozenset({_F.PEFT, _F.PEFT_LOHA, _F.PEFT_LOKR, _F.PEFT_ADALORA})
    choice: InputFormat | None = InputFormat.PEFT

    def claims(self, probe: Probe) -> bool:
        if probe.forced == InputFormat.PEFT:
            return True
        return probe.detecting() and (
            probe.config_file is not None or looks_like_peft(probe.tensors_header)
        )

    def refusal(self, probe: Probe) -> InputError | None:
        return None

    def read(self, probe: Probe) -> Adapter:
        return read_peft(
            path=probe.path,
            tensor_file=probe.tensor_file,
            config_file=probe.config_file,
            alpha=probe.alpha,
            header=probe.tensors_header,
        )
