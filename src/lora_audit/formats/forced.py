"""``--input-format`` forced: refuse it when it would ignore a scale the files give.

Forcing a reader chooses how the keys are paired, never where the scale comes from: each
reader applies only the scale sources its writer's loader reads. A PEFT ``adapter_config.json``
(``lora_alpha``, ``alpha_pattern``, rsLoRA) is read by the PEFT reader alone, mlx-lm's
``lora_parameters.scale`` by the mlx reader, diffusers' ``lora_adapter_metadata`` header entry
by the PEFT (and diffusers pipeline) reader, and the per-module ``.alpha`` tensors of
kohya/ComfyUI files by the kohya reader. A forced reader that would skip one of them would
report every σ off by that scale (2× on a PEFT adapter with ``lora_alpha = 2r`` read as
kohya), so it is refused by name instead.
"""

from __future__ import annotations

from pathlib import Path

from lora_audit.errors import InputError
from lora_audit.formats.safetensors_io import Header

__all__ = ["check_forced"]


def scale_sources(
    header: Header, *, config_file: Path | None, mlx_config: bool
) -> list[tuple[str, str]]:
    """``(what, the reader that reads it)`` for each scale source the files hold."""
    sources: list[tuple[str, str]] = []
    if config_file is not None and mlx_config:
        sources.append((f"{config_file} (mlx-lm's lora_parameters.scale)", "mlx"))
    elif config_file is not None:
        sources.append((f"{config_file} (lora_alpha, alpha_pattern, use_rslora)", "peft"))
    if "lora_adapter_metadata" in header.metadata:
        sources.append(("the header's lora_adapter_metadata (diffusers' LoRA config)", "peft"))
    alphas = sum(1 for key in header.tensors if key.endswith(".alpha"))
    if alphas:
        sources.append((f"{alphas} per-module .alpha tensor(s)", "kohya"))
    return sources


def check_forced(
    fmt: str, *, header: Header, config_file: Path | None, mlx_config: bool, tensor_file: Path
) -> None:
    """Refuse a forced ``fmt`` whose reader would ignore a scale source the files hold.

    Raises
    ------
    InputError
        When ``fmt`` is not ``auto`` and a scale source is read by another reader only.
    """
    if fmt == "auto":
        return
    for what, reader in scale_sources(header, config_file=config_file, mlx_config=mlx_config):
        if reader != fmt:
            raise InputError(
                f"{tensor_file}: --input-format {fmt} would ignore the scales in {what}, "
                f"which only the {reader} reader applies",
                hint=f"drop --input-format (auto detects it) or pass --input-format {reader}; "
                "to read the weights without that scale, copy the .safetensors file alone",
            )
