"""What a file really is, and what to say when it is not an adapter lora-audit reads.

Two questions are answered here, for every reader and the dispatcher alike:

* :func:`sniff` — the container, from the first bytes (never from the suffix alone):
  safetensors, GGUF, a zip-format ``torch.save`` pickle, a legacy pickle, the old llama.cpp
  ``ggla`` LoRA, a NumPy file, or unknown. Nothing is unpickled or parsed beyond the magic.
* :func:`diagnose_keys` — for a valid safetensors file in which no reader found LoRA factors,
  which known non-LoRA format its keys belong to (IA3, OFT/BOFT, VeRA, LyCORIS full or GLoRA,
  FourierFT, HRA, Bone/MiSS, a full model) and what to do about it.

Every refusal is an :class:`~lora_audit.errors.InputError` of one line that names the format.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Collection
from pathlib import Path
from typing import Literal

from lora_audit.errors import InputError

#: What :func:`sniff` can tell from a file's first bytes.
FileKind = Literal["safetensors", "gguf", "torch-zip", "pickle", "ggla", "npy", "empty", "unknown"]

#: Keys that mark PEFT and LyCORIS methods which are not a low-rank ``B·A``, by format name.
_NOT_LORA: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("IA3 (PEFT)", re.compile(r"\.ia3_l(\.|$)")),
    ("BOFT (PEFT)", re.compile(r"\.boft_(R|s)(\.|$)")),
    ("OFT (PEFT)", re.compile(r"\.oft_(R|s)(\.|$)")),
    ("VeRA (PEFT)", re.compile(r"(\.vera_lambda_[bd]|(^|\.)vera_[AB])(\.|$)")),
    ("FourierFT (PEFT)", re.compile(r"\.fourierft_spectrum(\.|$)")),
    ("HRA (PEFT)", re.compile(r"\.hra_u(\.|$)")),
    ("Bone/MiSS (PEFT)", re.compile(r"\.(bone|miss)_block(\.|$)")),
    ("VB-LoRA (PEFT)", re.compile(r"(\.vblora_logits_[AB]|(^|\.)vblora_vector_bank)(\.|$)")),
    ("RandLoRA (PEFT)", re.compile(r"\.randlora_(A|B|gamma|lambda)(\.|$)")),
    ("SHiRA (PEFT)", re.compile(r"\.shira_(weight|indices)(\.|$)")),
    ("C3A (PEFT)", re.compile(r"\.c3a_kernel(\.|$)")),
    ("LN tuning (PEFT)", re.compile(r"\.ln_tuning_layers\.")),
    ("LyCORIS OFT/BOFT", re.compile(r"\.(oft_blocks|oft_diag)$")),
    ("LyCORIS IA3", re.compile(r"\.on_input$")),
    ("LyCORIS GLoRA", re.compile(r"\.[ab][12]\.weight$")),
    ("LyCORIS full (diff)", re.compile(r"\.diff(_b)?$")),
)

#: Factor keys of the readers lora-audit has (PEFT, kohya/LyCORIS, mlx-lm).
_OTHER_LORA = re.compile(
    r"\.(lora_[AB]|lora_(down|up)|lora_[ab]|hada_w[12]_[ab]|lokr_w[12](_[ab])?)(\.weight)?$"
)

_WHAT_NOT_LORA = (
    "its update is not stored as low-rank factors (B·A) that lora-audit can read; "
    "lora-audit audits LoRA, DoRA, LoCon, LoHa and LoKr"
)


def sniff(path: Path) -> FileKind:
    """The container of ``path`` from its first bytes (the file is not parsed further)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
            size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not head:
        return "empty"
    if len(head) >= 9:  # first: a header length can begin with any bytes, even 0x80 0x05
        (n,) = struct.unpack("<Q", head[:8])
        if 8 + n <= size and head[8:9] == b"{":
            return "safetensors"
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:1] == b"\x80" and head[1:2] in {b"\x02", b"\x03", b"\x04", b"\x05"}:
        return "pickle"
    if head[:4] == b"algg":  # uint32 0x67676c61 ("ggla") written little-endian
        return "ggla"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    return "unknown"


def pickle_error(path: Path, *, kind: FileKind = "pickle") -> InputError:
    """The refusal of a pickled checkpoint (PEFT ``adapter_model.bin``, kohya/SD ``.pt``/``.ckpt``).

    The hint is a conversion recipe to run in a trusted environment; a PEFT directory gets its
    ``adapter_model.safetensors`` beside ``adapter_config.json``.
    """
    target = (
        path.with_name("adapter_model.safetensors")
        if path.name == "adapter_model.bin"
        else path.with_suffix(".safetensors")
    )
    what = "a zip-format torch.save checkpoint" if kind == "torch-zip" else "a pickled checkpoint"
    recipe = (
        'if you trust its source, convert it once: python -c "import torch; '
        "from safetensors.torch import save_file; "
        f"sd = torch.load('{path}', weights_only=True); "
        "sd = sd.get('state_dict', sd); "
        f"save_file({{k: v.contiguous() for k, v in sd.items()}}, '{target}')\" "
        "and audit the .safetensors file"
    )
    return InputError(
        f"{path}: {what} (PEFT .bin, kohya/SD .pt/.ckpt); pickles are never opened here, "
        "because unpickling can run arbitrary code",
        hint=recipe,
    )


def refuse_container(path: Path, kind: FileKind) -> InputError | None:
    """The refusal of a file recognised as something other than safetensors, else ``None``.

    GGUF has its own reader; an ``unknown`` or ``empty`` file is left to the safetensors
    header check, whose messages say what is wrong with it.
    """
    if kind in {"pickle", "torch-zip"}:
        return pickle_error(path, kind=kind)
    if kind == "ggla":
        return InputError(
            f"{path}: a legacy llama.cpp LoRA (ggla), the format before GGUF",
            hint="convert the PEFT adapter it came from with llama.cpp's convert_lora_to_gguf.py, "
            "or audit that PEFT adapter directly",
        )
    if kind == "npy":
        return InputError(f"{path}: a NumPy .npy array, not an adapter")
    return None


def not_lora(keys: Collection[str]) -> tuple[str, str] | None:
    """``(message, hint)`` when ``keys`` hold no LoRA factor but a known non-LoRA method's."""
    if any(_OTHER_LORA.search(k) for k in keys):
        return None
    for name, pattern in _NOT_LORA:
        hit = next((k for k in keys if pattern.search(k)), None)
        if hit is not None:
            return f"a {name} adapter (e.g. {hit!r})", _WHAT_NOT_LORA
    return None


def diagnose_keys(keys: Collection[str]) -> tuple[str, str] | None:
    """``(message, hint)`` naming the non-LoRA format ``keys`` belong to, or ``None``.

    Called only when no reader found LoRA factors among ``keys``.
    """
    found = not_lora(keys)
    if found is not None:
        return found
    other = next((k for k in keys if _OTHER_LORA.search(k)), None)
    if other is not None:
        return (
            f"LoRA factors of another format (e.g. {other!r}) than the one forced",
            "drop --input-format: the reader is chosen from the keys and the config",
        )
    weights = [k for k in keys if k.endswith(".weight")]
    if weights and len(weights) >= len(keys) / 2:
        return (
            f"the weights of a full model ({len(keys)} tensors such as {weights[0]!r}), "
            "not an adapter",
            "pass the adapter to audit, and these weights as --base",
        )
    return None


def no_factors_error(tensor_file: Path, keys: Collection[str]) -> InputError:
    """The refusal of a safetensors file in which no LoRA factor was found."""
    found = diagnose_keys(keys)
    if found is not None:
        message, hint = found
        return InputError(f"{tensor_file}: no LoRA factors found: {message}", hint=hint)
    example = f" (keys such as {next(iter(keys))!r})" if keys else " (no tensors)"
    return InputError(
        f"{tensor_file}: no LoRA factors found{example}",
        hint="lora-audit reads PEFT, kohya/sd-scripts, LyCORIS, diffusers, mlx-lm and GGUF "
        "LoRA adapters; this file is none of them",
    )
