"""Checks of untrusted adapter configs that every reader shares.

* :func:`check_lora_numbers`: ``r``, ``lora_alpha``, ``rank_pattern`` and ``alpha_pattern``
  of a PEFT-style config (``adapter_config.json`` or diffusers' ``lora_adapter_metadata``)
  hold positive integers (ranks) and finite numbers (alphas) — no ``NaN``,
  ``Infinity``, ``1e309`` or booleans — and pattern keys that cannot make matching
  backtrack for hours.
* :func:`check_one_adapter_name`: a PEFT weights file holds one adapter's factors, not the
  keys of two adapter names (``….lora_A.default.weight`` next to ``….lora_A.other.weight``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lora_audit.adapter import LoraLayer
from lora_audit.errors import InputError
from lora_audit.formats.patterns import check_pattern_keys

_PEFT_FACTOR = re.compile(
    r"\.(?:lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.(?P<name>[^.]+))?(?:\.weight)?$"
)


def _number_problem(value: Any, *, integer: bool) -> str | None:
    """Ranks must be positive integers; alphas finite numbers (a negative alpha is a real,
    negated update: PEFT applies it and compress splits its sign exactly; an alpha of 0 is
    a zero update PEFT loads, reported by :func:`zero_scale_warning`)."""
    wanted = "must be a positive integer" if integer else "must be a finite number"
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        return wanted
    if isinstance(value, float) and not math.isfinite(value):
        return wanted
    if integer and value <= 0:
        return wanted
    return None


def zero_scale_warning(layers: Sequence[LoraLayer], *, where: str) -> list[str]:
    """One warning when layers have scale 0 (``lora_alpha = 0`` or an ``alpha_pattern`` value
    of 0): PEFT loads such an adapter, and its update ΔW = 0·B·A is zero whatever B and A
    hold, so every figure of those layers is 0."""
    zero = [layer.name for layer in layers if layer.scale == 0]
    if not zero:
        return []
    which = "every layer" if len(zero) == len(layers) else f"{len(zero)} of {len(layers)} layers"
    return [
        f"{where}: scale 0 in {which} (lora_alpha or alpha_pattern = 0, e.g. {zero[0]!r}): "
        "the adapter changes nothing (ΔW = 0·B·A = 0), whatever its factors hold — check "
        "lora_alpha in the config"
    ]


def check_lora_numbers(raw: Mapping[str, Any], *, where: str) -> None:
    """Refuse a config whose scale or rank fields are not positive finite numbers.

    Parameters
    ----------
    raw
        The config as parsed (a JSON object).
    where
        The file (and field) named in the message.

    Raises
    ------
    InputError
        Naming the key: ``r`` or a ``rank_pattern`` value that is not a positive integer,
        ``lora_alpha`` or an ``alpha_pattern`` value that is not a finite number,
        a pattern that is not an object, or a pattern key :func:`regex_problem` refuses.
    """
    for field, integer in (("r", True), ("lora_alpha", False)):
        value = raw.get(field)
        problem = None if value is None else _number_problem(value, integer=integer)
        if problem is not None:
            raise InputError(f"{where}: {field} = {_shown(value)} {problem}")
    for field, integer in (("rank_pattern", True), ("alpha_pattern", False)):
        pattern = raw.get(field) or {}
        if not isinstance(pattern, dict):
            raise InputError(
                f"{where}: {field} must map module patterns to numbers",
                hint="AdaLoRA-style boolean masks are not supported",
            )
        for key, value in pattern.items():
            problem = _number_problem(value, integer=integer)
            if problem is not None:
                raise InputError(f"{where}: {field}[{_shown(key)}] = {_shown(value)} {problem}")
        check_pattern_keys(pattern, field=field, where=where)


def check_one_adapter_name(keys: Iterable[str], *, where: str) -> None:
    """Refuse PEFT factor keys that carry two different adapter names.

    ``….lora_A.weight`` carries no name; ``….lora_A.NAME.weight`` carries ``NAME``. A file
    saved by PEFT holds one adapter, so keys with different names (or with and without one)
    are two adapters mixed into one file, which cannot be audited as one.

    Raises
    ------
    InputError
        Naming the two adapter names and a key of each.
    """
    seen: dict[str, str] = {}
    for key in keys:
        m = _PEFT_FACTOR.search(key)
        if m is None or m["name"] == "bias":  # lora_B.bias belongs to the unnamed factors
            continue
        name = m["name"] if m["name"] not in (None, "weight") else "(none)"
        seen.setdefault(name, key)
        if len(seen) > 1:
            (first, key_a), (second, key_b) = list(seen.items())[:2]
            raise InputError(
                f"{where}: LoRA factors of two adapter names, {first!r} ({key_a!r}) and "
                f"{second!r} ({key_b!r})",
                hint="the file mixes two adapters; save each adapter separately "
                "(PeftModel.save_pretrained(dir, selected_adapters=[name]))",
            )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"
