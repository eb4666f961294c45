"""The model card (``README.md``) of an adapter directory, carried over by ``compress``.

A PEFT adapter directory saved by ``save_pretrained`` or pushed to the Hub holds a
``README.md`` model card (YAML front matter for the Hub, then prose). ``compress`` writes a
new adapter directory; the card is copied into it byte for byte, with one line appended that
says what lora-audit changed, so the card never describes the old ranks silently.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lora_audit.adapter import Adapter

#: File name of a model card in an adapter directory (PEFT, the Hub, mlx-lm).
MODEL_CARD = "README.md"
#: Larger "cards" are not copied (a model card is a few kilobytes).
MAX_CARD_BYTES = 16 * 1024 * 1024


def card_directory(adapter: Adapter) -> Path:
    """The directory the adapter was read from (its own, or its tensor file's)."""
    return adapter.path if adapter.path.is_dir() else adapter.tensor_file.parent


def source_card(adapter: Adapter) -> bytes | None:
    """The adapter's model card as stored, or ``None`` when it has none (a regular file only:
    a link or anything else is not followed)."""
    path = card_directory(adapter) / MODEL_CARD
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CARD_BYTES:
        return None
    return path.read_bytes()


def carried_card(adapter: Adapter, note: str) -> bytes | None:
    """The card to write into the new directory (``note`` appended), or ``None``."""
    card = source_card(adapter)
    return None if card is None else with_note(card, note) if note else card


def with_note(card: bytes, note: str) -> bytes:
    """``card`` unchanged, then a blank line and ``note`` as its own paragraph."""
    body = card if not card or card.endswith(b"\n") else card + b"\n"
    return body + b"\n" + note.rstrip("\n").encode("utf-8") + b"\n"
