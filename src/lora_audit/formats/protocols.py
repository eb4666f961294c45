"""What a format reader and a format writer are: the protocols the registry holds them by.

A :class:`FormatReader` is asked two things about a file, in the registry's order
(:data:`lora_audit.formats.registry.READERS`): whether it claims the file from a
:class:`Probe` (what the file's first bytes, its safetensors header and the config beside it
say, read once, before any tensor), and, once it has claimed it, whether it refuses it; then
it reads it. A :class:`FormatWriter` says which formats it writes back, refuses what it
cannot write, checks the ranks its loader needs, and writes a :class:`WriteJob`.

Neither reads or checks anything the registry checks itself: the forced ``--input-format``
against the file's scale sources (:mod:`~lora_audit.formats.forced`), the work bounds of a
safetensors file (:mod:`~lora_audit.formats.work_bounds`) and that every tensor named like a
LoRA factor is read (:mod:`~lora_audit.formats.accounted`) are run once, centrally, around
whichever reader reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lora_audit.adapter import Adapter, LoraLayer
from lora_audit.choices import AdapterFormat, InputFormat
from lora_audit.errors import InputError
from lora_audit.formats.safetensors_io import Header
from lora_audit.formats.sniff import FileKind

if TYPE_CHECKING:
    from lora_audit.formats.output_guard import Kind, OutputGuard
    from lora_audit.formats.writer import NewLayer

__all__ = ["FormatReader", "FormatWriter", "Probe", "WriteJob"]


@dataclass(frozen=True, kw_only=True)
class Probe:
    """What is known of an input before any tensor is read.

    Attributes
    ----------
    path
        The file or directory the user named.
    tensor_file
        The file the tensors are in (:func:`~lora_audit.formats.resolve_files`).
    config_file
        The ``adapter_config.json`` beside it, if any.
    kind
        What the first bytes say the file is (:func:`~lora_audit.formats.sniff.sniff`).
    header
        The validated safetensors header; ``None`` for a GGUF file.
    mlx_config
        Whether ``config_file`` is the config ``mlx_lm.lora`` writes.
    configs
        diffusers' per-component LoRA configs from the header (``save_lora_weights``), read
        only when there is no ``config_file``; ``None`` or empty when there are none.
    forced
        ``--input-format``: ``auto``, or the reader family the user forced.
    alpha
        ``--alpha``: ``lora_alpha`` where neither a config nor the file gives a scale.
    """

    path: Path
    tensor_file: Path
    config_file: Path | None
    kind: FileKind
    header: Header | None
    mlx_config: bool = False
    configs: dict[str, dict[str, Any]] | None = None
    forced: InputFormat = InputFormat.AUTO
    alpha: float | None = None

    @property
    def tensors_header(self) -> Header:
        """The safetensors header (a reader that claims only safetensors files asks for it)."""
        if self.header is None:
            raise RuntimeError(f"{self.tensor_file}: no safetensors header was read")
        return self.header

    def detecting(self) -> bool:
        """Whether the reader is detected (``--input-format auto``) rather than forced."""
        return self.forced == InputFormat.AUTO


class FormatReader(Protocol):
    """One reader in the registry's detection order."""

    @property
    def formats(self) -> frozenset[AdapterFormat]:
        """Every ``Adapter.format`` this reader can give."""
        ...

    @property
    def choice(self) -> InputFormat | None:
        """The ``--input-format`` that forces this reader; ``None`` when the file itself
        chooses it whatever the flag says (GGUF's magic bytes, diffusers' per-component
        configs). A forced reader is refused where it would ignore a scale source the files
        hold (:func:`~lora_audit.formats.forced.check_forced`)."""
        ...

    def claims(self, probe: Probe) -> bool:
        """Whether this reader reads the file (the first reader that claims it does)."""
        ...

    def refusal(self, probe: Probe) -> InputError | None:
        """Why a file this reader claims is still no adapter it reads, or ``None``."""
        ...

    def read(self, probe: Probe) -> Adapter:
        """The adapter, read as its writer's own loader applies it."""
        ...


@dataclass(frozen=True, kw_only=True)
class WriteJob:
    """One ``compress`` or ``merge`` output: ``adapter`` with ``new_layers`` in place.

    ``guard`` has already claimed ``output`` (:func:`~lora_audit.formats.writer.check_output`);
    ``scale`` is the one scale of a PEFT output; ``card_note`` goes under a copied model card.
    """

    adapter: Adapter
    new_layers: Mapping[str, NewLayer]
    output: Path
    guard: OutputGuard
    provenance: Mapping[str, str] = field(default_factory=dict)
    card_note: str = ""
    scale: float = 1.0


class FormatWriter(Protocol):
    """How adapters of some formats are written back (``compress``, ``merge``)."""

    @property
    def formats(self) -> frozenset[AdapterFormat]:
        """The formats this writer writes back, each in its own format."""
        ...

    @property
    def loader(self) -> tuple[str, str]:
        """``(what the output is, what loads it)``, for the messages about a directory output."""
        ...

    def refuse(self, adapter: Adapter) -> None:
        """Raise (naming what to do instead) when ``adapter`` cannot be written back at all."""
        ...

    def check_ranks(self, adapter: Adapter, new_ranks: Mapping[str, int]) -> None:
        """Raise when the layers' ranks after the rewrite are ones the loader cannot load."""
        ...

    def output_kind(self, adapter: Adapter) -> Kind:
        """Whether the output is a directory or one file."""
        ...

    def stores_alpha(self, adapter: Adapter, layer: LoraLayer) -> bool:
        """Whether a rewritten layer gets ``<module>.alpha = k`` (else its factors hold the
        scale, or the config does)."""
        ...

    def write(self, job: WriteJob) -> Path:
        """Write the output atomically; the tensor file written."""
        ...
