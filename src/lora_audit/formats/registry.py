"""The format registry: the readers in their detection order, the writers, and what is checked
around every read.

:data:`READERS` *is* the detection order (``docs/formats.md`` lists it): the first reader
whose :meth:`~lora_audit.formats.protocols.FormatReader.claims` holds for the file's
:class:`~lora_audit.formats.protocols.Probe` reads it. The order matters: mlx-lm is told by
its config before anything else reads ``adapter_config.json``; diffusers' per-component
configs come before PEFT's keys; XLabs and the other single-file SD formats (no config beside
them) come before PEFT's keys, which ComfyUI-style and diffusers files share; PEFT is the
fall-through for any config; mlx-lm's keys in a file alone come last. ``--input-format``
forces a reader family (:attr:`~lora_audit.formats.protocols.FormatReader.choice`): the
readers of another family do not claim the file, and a forced reader that would ignore a
scale source of the files is refused (:func:`~lora_audit.formats.forced.check_forced`).

Around whichever reader reads, the registry runs its post-conditions once, centrally: the
work bounds of a safetensors file (:func:`~lora_audit.formats.work_bounds.
check_work_bounded`) and that every tensor named like a LoRA factor is part of a layer read
(:func:`~lora_audit.formats.accounted.check_accounted`).

:data:`WRITERS` gives each :class:`~lora_audit.choices.AdapterFormat` that a reader gives the
writer that writes it back (``compress``, ``merge``).
"""

from __future__ import annotations

from pathlib import Path

from lora_audit.adapter import Adapter
from lora_audit.choices import AdapterFormat, InputFormat, InputFormatName
from lora_audit.formats import mlx, sniff
from lora_audit.formats.accounted import check_accounted
from lora_audit.formats.diffusers_metadata import component_configs
from lora_audit.formats.forced import check_forced
from lora_audit.formats.protocols import FormatReader, FormatWriter, Probe
from lora_audit.formats.readers import (
    DiffusersPipelineReader,
    GgufReader,
    KohyaReader,
    MlxReader,
    PeftReader,
    XlabsReader,
)
from lora_audit.formats.safetensors_io import read_header
from lora_audit.formats.work_bounds import check_work_bounded
from lora_audit.formats.writers import (
    DiffusersPipelineWriter,
    GgufWriter,
    MlxWriter,
    PeftVariantWriter,
    PeftWriter,
    SingleFileSdWriter,
)

__all__ = ["READERS", "WRITERS", "probe", "read", "reader_for", "writer_for"]

#: The detection order: the first reader that claims a file reads it.
READERS: tuple[FormatReader, ...] = (
    GgufReader(),  # by its magic bytes, whatever --input-format says
    DiffusersPipelineReader(),  # one config per component in the header (auto, peft)
    MlxReader(by_keys=False),  # by the adapter_config.json mlx_lm.lora writes
    XlabsReader(),  # the single-file SD branch (no config): x-flux's keys first
    KohyaReader(),  # kohya / sd-scripts, LyCORIS, ComfyUI-style, diffusers processors
    PeftReader(),  # any other config, or PEFT's keys: the fall-through
    MlxReader(by_keys=True),  # mlx-lm's lora_a / lora_b keys in a file alone
)

#: The writers; every format a reader gives is written back by exactly one of them.
WRITERS: tuple[FormatWriter, ...] = (
    PeftWriter(),
    PeftVariantWriter(),  # refused by name
    DiffusersPipelineWriter(),
    SingleFileSdWriter(),
    MlxWriter(),
    GgufWriter(),  # refused, with the route that works
)


def probe(
    *,
    path: Path,
    tensor_file: Path,
    config_file: Path | None,
    forced: InputFormatName = "auto",
    alpha: float | None = None,
) -> Probe:
    """What the file's first bytes, its header and its config say, before any tensor is read.

    Raises
    ------
    InputError
        For a container that is no adapter (pickle, ``.npy``, …) or an invalid header.
    """
    kind = sniff.sniff(tensor_file)
    if kind == "gguf":
        return Probe(
            path=path,
            tensor_file=tensor_file,
            config_file=config_file,
            kind=kind,
            header=None,
            forced=InputFormat(forced),
            alpha=alpha,
        )
    refusal = sniff.refuse_container(tensor_file, kind)
    if refusal is not None:
        raise refusal
    header = read_header(tensor_file)
    mlx_config = config_file is not None and mlx.is_mlx_config_file(config_file)
    configs = component_configs(header, where=str(tensor_file)) if config_file is None else None
    return Probe(
        path=path,
        tensor_file=tensor_file,
        config_file=config_file,
        kind=kind,
        header=header,
        mlx_config=mlx_config,
        configs=configs,
        forced=InputFormat(forced),
        alpha=alpha,
    )


def reader_for(probe: Probe) -> FormatReader | None:
    """The first reader of :data:`READERS` that claims the file; ``None`` when none does."""
    return next((reader for reader in READERS if reader.claims(probe)), None)


def read(probe: Probe) -> Adapter:
    """The adapter in the probed file, read by the reader that claims it, then checked.

    Raises
    ------
    InputError
        When no reader claims the file, the claiming reader refuses it, a forced reader would
        ignore a scale source, the reader refuses what it finds, or a post-condition fails.
    """
    reader = reader_for(probe)
    if reader is None:
        raise sniff.no_factors_error(probe.tensor_file, probe.tensors_header.tensors)
    if reader.choice is not None and probe.forced != InputFormat.AUTO:
        check_forced(
            probe.forced,
            header=probe.tensors_header,
            config_file=probe.config_file,
            mlx_config=probe.mlx_config,
            tensor_file=probe.tensor_file,
        )
    refusal = reader.refusal(probe)
    if refusal is not None:
        raise refusal
    adapter = reader.read(probe)
    if probe.header is not None:
        size = probe.tensor_file.stat().st_size
        check_work_bounded(adapter, header=probe.header, file_size=size)
    return check_accounted(adapter)  # no tensor named like a LoRA factor outside every layer


def claimed(probe: Probe) -> bool:
    """Whether a reader claims the file and does not refuse it (no tensor is read)."""
    reader = reader_for(probe)
    return reader is not None and reader.refusal(probe) is None


def writer_for(fmt: AdapterFormat) -> FormatWriter:
    """The writer that writes adapters of format ``fmt`` back.

    Raises
    ------
    LookupError
        For a format no writer writes (``merged``: merge's sum in memory, never written).
    """
    for writer in WRITERS:
        if fmt in writer.formats:
            return writer
    raise LookupError(f"no writer writes {fmt!r} adapters")
