"""The writers of the registry: which formats each writes back, and how.

Each class is a :class:`~lora_audit.formats.protocols.FormatWriter`; the registry
(:data:`lora_audit.formats.registry.WRITERS`) maps every :class:`~lora_audit.choices.
AdapterFormat` a reader gives to one of them. The layout of each output is described in
:mod:`lora_audit.formats.writer`, which holds what they share (the tensors of an output, the
PEFT config, the guard) and dispatches to them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from lora_audit.adapter import Adapter, LoraLayer, Structure
from lora_audit.choices import AdapterFormat
from lora_audit.errors import UsageError
from lora_audit.formats.diffusers_metadata import one_naming, pipeline_metadata
from lora_audit.formats.output_guard import Kind
from lora_audit.formats.peft import CONFIG_NAME, WEIGHTS_NAME
from lora_audit.formats.protocols import WriteJob
from lora_audit.formats.safetensors_io import StoredTensor, write_safetensors
from lora_audit.formats.writer import (
    NO_ALPHA_FORMATS,
    carry_card,
    kohya_metadata,
    output_tensors,
    peft_config,
    write_plain,
)
from lora_audit.formats.xlabs import check_one_rank

__all__ = [
    "DiffusersPipelineWriter",
    "GgufWriter",
    "MlxWriter",
    "PeftVariantWriter",
    "PeftWriter",
    "SingleFileSdWriter",
]


class _Writes:
    """What most writers say: nothing refused, no rank constraint, one file, alphas stored."""

    def refuse(self, adapter: Adapter) -> None:
        return None

    def check_ranks(self, adapter: Adapter, new_ranks: Mapping[str, int]) -> None:
        return None

    def output_kind(self, adapter: Adapter) -> Kind:
        return "file"

    def stores_alpha(self, adapter: Adapter, layer: LoraLayer) -> bool:
        return True


_F = AdapterFormat
_PEFT_LOADER = ("a PEFT", "PeftModel.from_pretrained")


class PeftWriter(_Writes):
    """PEFT LoRA: a directory (``adapter_config.json`` rebuilt by :func:`peft_config`), or one
    file with that config in the header's ``lora_adapter_metadata`` when the input was one."""

    formats = frozenset({_F.PEFT})
    loader = _PEFT_LOADER

    def check_ranks(self, adapter: Adapter, new_ranks: Mapping[str, int]) -> None:
        return None  # rank_pattern gives every layer its own rank

    def output_kind(self, adapter: Adapter) -> Kind:
        config = bool(adapter.config) and "lora_adapter_metadata" not in adapter.metadata
        return "directory" if config else "file"

    def stores_alpha(self, adapter: Adapter, layer: LoraLayer) -> bool:
        return False  # the config holds every layer's alpha

    def write(self, job: WriteJob) -> Path:
        adapter, guard, output = job.adapter, job.guard, job.output
        final = Path(os.path.realpath(output))  # now: `-o .` leaves the working directory behind
        tensors, metadata = output_tensors(adapter, job.new_layers)
        metadata.update(job.provenance)
        config = peft_config(adapter, job.new_layers, scale=job.scale)
        if self.output_kind(adapter) == "directory":
            with guard.directory(output, role="--output") as tmp:
                write_plain(
                    tmp / WEIGHTS_NAME, lambda fh: write_safetensors(fh, tensors, metadata=metadata)
                )
                text = json.dumps(config, indent=2) + "\n"  # pattern order matters to PEFT
                write_plain(tmp / CONFIG_NAME, text.encode("utf-8"))
                carry_card(adapter, tmp, note=job.card_note)
            return final / WEIGHTS_NAME
        metadata["lora_adapter_metadata"] = json.dumps(config)
        return _write_file(job, tensors, metadata)


class PeftVariantWriter(_Writes):
    """PEFT LoHa, LoKr and AdaLoRA: refused by name (PEFT rebuilds their own factors, not a
    truncated B·A: :func:`~lora_audit.formats.peft_variants.compress_refusal`)."""

    formats = frozenset({_F.PEFT_LOHA, _F.PEFT_LOKR, _F.PEFT_ADALORA})
    loader = _PEFT_LOADER

    def refuse(self, adapter: Adapter) -> None:
        from lora_audit.formats.peft_variants import compress_refusal

        if (refusal := compress_refusal(adapter)) is not None:
            raise refusal

    def write(self, job: WriteJob) -> Path:
        self.refuse(job.adapter)
        raise AssertionError(f"{job.adapter.path}: {job.adapter.format} is never written")


class DiffusersPipelineWriter(_Writes):
    """diffusers ``save_lora_weights`` files: one file, PEFT's names throughout, each
    component's config written back in the header (:func:`~lora_audit.formats.
    diffusers_metadata.pipeline_metadata`)."""

    formats = frozenset({_F.DIFFUSERS_PIPELINE})
    loader = ("a diffusers", "load_lora_weights")

    def check_ranks(self, adapter: Adapter, new_ranks: Mapping[str, int]) -> None:
        return None  # each component's rank_pattern

    def stores_alpha(self, adapter: Adapter, layer: LoraLayer) -> bool:
        return False

    def write(self, job: WriteJob) -> Path:
        tensors, metadata = output_tensors(job.adapter, job.new_layers)
        tensors = one_naming(tensors)  # loads in full in diffusers
        metadata.update(job.provenance)
        config = pipeline_metadata(job.adapter, job.new_layers)
        metadata["lora_adapter_metadata"] = json.dumps(config)
        return _write_file(job, tensors, metadata)


class SingleFileSdWriter(_Writes):
    """kohya / LyCORIS / ComfyUI-style / diffusers processors / XLabs: one file, the same
    keys, ``<module>.alpha = k`` where the format stores alphas (:data:`NO_ALPHA_FORMATS`:
    the scale baked in), ``ss_network_dim``/``ss_network_alpha`` updated; XLabs at one rank."""

    formats = frozenset({_F.KOHYA, _F.LYCORIS, _F.COMFYUI, _F.DIFFUSERS, _F.XLABS})
    loader = ("a kohya", "the loader")  # never a directory

    def check_ranks(self, adapter: Adapter, new_ranks: Mapping[str, int]) -> None:
        if adapter.format == _F.XLABS:  # x-flux builds every processor at one rank
            check_one_rank(adapter, new_ranks)

    def stores_alpha(self, adapter: Adapter, layer: LoraLayer) -> bool:
        return not (adapter.format in NO_ALPHA_FORMATS and layer.structure is Structure.LORA)

    def write(self, job: WriteJob) -> Path:
        tensors, metadata = output_tensors(job.adapter, job.new_layers)
        if job.adapter.format == _F.DIFFUSERS:  # loads in full in diffusers
            tensors = one_naming(tensors)
        metadata.update(job.provenance)
        metadata.update(kohya_metadata(job.adapter, job.new_layers))
        return _write_file(job, tensors, metadata)


class MlxWriter(_Writes):
    """mlx-lm: a directory with ``adapters.safetensors`` and ``adapter_config.json``, every
    layer at one rank (:mod:`~lora_audit.formats.mlx_write`)."""

    formats = frozenset({_F.MLX})
    loader = ("an mlx-lm", "mlx_lm.load")

    def refuse(self, adapter: Adapter) -> None:
        from lora_audit.formats.mlx_write import check_ranks

        check_ranks(adapter, {})  # the run's adapter_config.json is needed

    def check_ranks(self, adapter: Adapter, new_ranks: Mapping[str, int]) -> None:
        return None  # checked where the files are built (mlx_write.check_ranks)

    def output_kind(self, adapter: Adapter) -> Kind:
        return "directory"

    def stores_alpha(self, adapter: Adapter, layer: LoraLayer) -> bool:
        return False  # lora_parameters.scale, one for every layer

    def write(self, job: WriteJob) -> Path:
        from lora_audit.formats.mlx_write import write_mlx

        adapter, output = job.adapter, job.output
        with job.guard.directory(output, role="--output") as tmp:
            write_mlx(
                adapter,
                job.new_layers,
                directory=tmp,
                metadata={**adapter.metadata, **job.provenance},
                write_plain=write_plain,
            )
            carry_card(adapter, tmp, note=job.card_note)
        return Path(os.path.realpath(output)) / "adapters.safetensors"


class GgufWriter(_Writes):
    """GGUF: refused, with the route that works (compress the PEFT adapter, convert again)."""

    formats = frozenset({_F.GGUF})
    loader = ("a GGUF", "llama.cpp")

    def refuse(self, adapter: Adapter) -> None:
        raise UsageError(
            f"{adapter.path}: compress does not write GGUF adapters",
            hint="compress the PEFT adapter the GGUF was converted from, then convert the "
            "result again with llama.cpp's convert_lora_to_gguf.py (inspect and check read "
            "GGUF directly)",
        )

    def stores_alpha(self, adapter: Adapter, layer: LoraLayer) -> bool:
        return False

    def write(self, job: WriteJob) -> Path:
        self.refuse(job.adapter)
        raise AssertionError(f"{job.adapter.path}: {job.adapter.format} is never written")


def _write_file(job: WriteJob, tensors: dict[str, StoredTensor], metadata: dict[str, str]) -> Path:
    """Write one ``.safetensors`` output through the guard."""
    return job.guard.write(
        job.output,
        lambda fh: write_safetensors(fh, tensors, metadata=metadata),
        role="--output",
        adapter=True,
    )
