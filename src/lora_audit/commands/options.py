"""Validation of the options the commands share, for the CLI and the Python API alike.

Messages name the options as the command line spells them (``--energy``); the Python API's
keywords have the same names.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from lora_audit.errors import UsageError

if TYPE_CHECKING:
    from lora_audit.decisions.compress_ranks import RankRule


def check_fraction(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Validate an option that must lie in (0, 1] (or [0, 1])."""
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        bound = "[0, 1]" if allow_zero else "(0, 1]"
        raise UsageError(f"{name} = {value:g} must be in {bound}", hint=f"e.g. {name} 0.99")
    return value


_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_budget(text: str) -> int:
    """``"2M"`` → 2000000; also ``500k``, ``1.5G``, ``120000`` (case-insensitive).

    Raises
    ------
    UsageError
        When the text is not a positive count of parameters.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", text)
    if not match:
        raise UsageError(f"--budget {text!r} is not a parameter count", hint="e.g. 2M, 500k")
    count = float(match[1]) * _SUFFIXES[match[2].lower()]
    if not math.isfinite(count):
        raise UsageError(f"--budget {text[:40]!r} is too large", hint="e.g. 2M, 500k")
    value = int(count)
    if value <= 0:
        raise UsageError(f"--budget {text!r} must be positive")
    return value


def rank_rule(
    *,
    rank: int | None,
    energy: float | None,
    ratio: float | None,
    budget: str | None,
    min_rank: int,
    max_rank: int | None,
    example: str = "lora-audit compress ADAPTER -o OUT --energy 0.99",
) -> RankRule:
    """The one rank rule the flags ask for; exactly one of the four must be given.

    ``example`` is the command the error's hint shows (``compress`` or ``merge``).
    """
    from lora_audit.decisions.compress_ranks import Mode, RankRule

    flags = {"--rank": rank, "--energy": energy, "--ratio": ratio, "--budget": budget}
    given = [flag for flag, value in flags.items() if value is not None]
    if len(given) != 1:
        raise UsageError(
            "give exactly one of --rank, --energy, --ratio, --budget"
            + (f" (got {', '.join(given)})" if given else ""),
            hint=f"e.g. {example}",
        )
    if min_rank < 1 or (max_rank is not None and max_rank < min_rank):
        raise UsageError(f"--min-rank {min_rank} / --max-rank {max_rank}: need 1 ≤ min ≤ max")
    mode: Mode
    if rank is not None:
        if rank < 1:
            raise UsageError(f"--rank {rank} must be at least 1")
        _refuse_contradictory_rank(rank, min_rank=min_rank, max_rank=max_rank)
        mode, value = "rank", float(rank)
    elif energy is not None:
        mode, value = "energy", check_fraction("--energy", energy)
    elif ratio is not None:
        if not ratio >= 1:
            raise UsageError(f"--ratio {ratio:g} must be at least 1", hint="e.g. --ratio 20")
        mode, value = "ratio", ratio
    else:
        assert budget is not None
        mode, value = "budget", float(parse_budget(budget))
    return RankRule(mode=mode, value=value, min_rank=min_rank, max_rank=max_rank)


def _refuse_contradictory_rank(rank: int, *, min_rank: int, max_rank: int | None) -> None:
    """``--rank K`` with a clamp that overrules it (``--min-rank`` above K, ``--max-rank``
    below K) is a contradiction, not a rule: refuse it rather than pick one.

    Raises
    ------
    UsageError
        When ``min_rank > rank`` or ``max_rank < rank``.
    """
    if min_rank > rank:
        raise UsageError(
            f"--rank {rank} contradicts --min-rank {min_rank} (every layer would end at "
            f"rank {min_rank}, not {rank})",
            hint=f"give --rank {min_rank}, or drop --min-rank",
        )
    if max_rank is not None and max_rank < rank:
        raise UsageError(
            f"--rank {rank} contradicts --max-rank {max_rank} (every layer would end at "
            f"rank {max_rank} or below, not {rank})",
            hint=f"give --rank {max_rank}, or drop --max-rank",
        )


def policy_settings(**given: float | int | None) -> dict[str, float | int]:
    """The policy settings given (by :class:`~lora_audit.decisions.check_rules.Policy` field
    name; ``None`` means not given), each validated.

    Raises
    ------
    UsageError
        For a value out of its setting's range, naming the flag and an example.
    """
    from lora_audit.decisions.check_rules import SETTINGS, Policy

    values = {k: v for k, v in given.items() if v is not None}
    for setting in SETTINGS:
        value = values.get(setting.field)
        if value is not None and (problem := setting.problem(value)) is not None:
            default = getattr(Policy(), setting.field)
            raise UsageError(
                f"--{setting.key} = {value:g} {problem}", hint=f"e.g. --{setting.key} {default:g}"
            )
    return values
