"""``compress --fit TARGET``: the rank rule and the refusals under which compress writes the
best adapter that ``check --target TARGET`` passes.

``--fit`` takes what ``check --target`` takes (:func:`~lora_audit.decisions.serving_targets.
parse_target`), and each server's constraints are the ones those rules check (docs/ci.md,
"Serving targets"; docs/compress.md, "Fitting a server"):

``vllm[:max-lora-rank=N]``
    Every layer's rank at most ``N`` (default 16; ``PEFTHelper.validate_legal`` compares the
    config's ``r`` with it, and ``set_lora`` copies each module's factors into slots
    ``max_lora_rank`` wide). The errors of the layers add up in ‖·‖F², so keeping each layer's
    top ``min(r_ℓ, N)`` singular triplets is the optimum under that bound (Eckart–Young, layer
    by layer); a rank rule given with ``--fit`` is clamped to ``N``. The one scale vLLM applies
    (``lora_alpha / r`` from the config) is what a PEFT output of compress already has.
    DoRA, ``modules_to_save`` and a ``bias`` other than ``"none"`` are refused by vLLM, and
    nothing lora-audit writes removes them exactly: refused.
``llama.cpp``
    One rank for every layer (its runtime scales each by ``lora_alpha / its own rank``):
    zero-padding to the largest rank, which is exact. No rank bound: nothing is truncated
    unless a rule asks. Tensors that are not LoRA factors stop ``convert_lora_to_gguf.py``:
    refused, as DoRA is.
``peft``
    Nothing beyond a PEFT output (PEFT reads what compress writes, ``rank_pattern`` keys
    matched as PEFT matches them); nothing is truncated unless a rule asks.

Every target needs a PEFT adapter in and writes one out (lora-audit does not convert formats).
"""

from __future__ import annotations

from collections.abc import Sequence

from lora_audit.decisions.compress_ranks import RankRule
from lora_audit.decisions.serving_targets import (
    DORA_FIX,
    SAVED_FIX,
    VLLM_DEFAULT_MAX_LORA_RANK,
    Target,
    TargetLayer,
    TargetSource,
    fit_command,
)
from lora_audit.errors import UsageError

FIT_FLAG = "--fit"
__all__ = ["FIT_FLAG", "check_fitted", "fit_command", "fit_refusal", "fit_rule", "fit_uniform"]


def fit_rule(target: Target, rule: RankRule | None, ranks: Sequence[int]) -> RankRule:
    """The rank rule ``compress --fit target`` applies.

    Parameters
    ----------
    target
        The server.
    rule
        The rule the user gave with ``--fit`` (``None``: keep as much as the target allows).
    ranks
        Every layer's rank in the input.

    Raises
    ------
    UsageError
        When the rule contradicts the target's rank bound (``--rank`` or ``--min-rank`` above
        vLLM's ``max_lora_rank``).
    """
    bound = _bound(target)
    if rule is None:
        keep = bound if bound is not None else max(ranks, default=1)
        return RankRule(mode="rank", value=float(keep), max_rank=bound)
    if bound is None:
        return rule
    given = (("--rank", rule.value if rule.mode == "rank" else 0), ("--min-rank", rule.min_rank))
    for flag, value in given:
        if value > bound:
            raise UsageError(
                f"{flag} {value:g} contradicts {FIT_FLAG} {target}: vLLM refuses a rank above "
                f"max_lora_rank {bound}",
                hint=f"give {flag} {bound} or less, or a larger max-lora-rank in {FIT_FLAG}",
            )
    top = bound if rule.max_rank is None else min(rule.max_rank, bound)
    return RankRule(mode=rule.mode, value=rule.value, min_rank=rule.min_rank, max_rank=top)


def fit_uniform(target: Target) -> bool:
    """Whether the target needs every layer at one rank (zero-padded: exact)."""
    return target.server == "llama.cpp"


def _bound(target: Target) -> int | None:
    if target.server != "vllm":
        return None
    return target.max_lora_rank or VLLM_DEFAULT_MAX_LORA_RANK


def fit_refusal(
    target: Target,
    info: TargetSource,
    layers: Sequence[TargetLayer],
    *,
    bias: str = "none",
    stops: int | None = None,
) -> UsageError | None:
    """Why ``compress --fit target`` cannot write an adapter the server reads exactly (or
    ``None``): a format other than PEFT, DoRA, ``modules_to_save``, other extra tensors, bias.

    ``bias`` is the config's; ``stops`` the number of tensors llama.cpp's converter stops at
    (default: every tensor that is not a LoRA factor, ``info.passthrough_tensors``).
    """
    where = f"{info.path}: {FIT_FLAG} {target}"
    if info.format != "peft":
        return UsageError(
            f"{where} writes PEFT adapters and this is a {info.format} adapter "
            f"(lora-audit does not convert {info.format})",
            hint=f"convert it to a PEFT adapter first, or compress it without {FIT_FLAG}",
        )
    if target.server == "peft":
        return None
    dora = info.use_dora or any(x.dora for x in layers)
    refused = [
        *(["DoRA"] if dora else []),
        *([f"modules_to_save ({', '.join(info.modules_to_save)})"] if info.modules_to_save else []),
    ]
    fixes = [*([DORA_FIX] if dora else []), *([SAVED_FIX] if info.modules_to_save else [])]
    if target.server == "vllm" and bias != "none":
        refused.append(f"bias {bias!r}")
        fixes.append('retrain with bias="none"')
    stops = info.passthrough_tensors if stops is None else stops
    if target.server == "llama.cpp" and stops and not info.modules_to_save:
        refused.append(f"{stops} tensors that are not LoRA factors")
        fixes.append(SAVED_FIX)
    if not refused:
        return None
    server = "vLLM" if target.server == "vllm" else target.server
    return UsageError(
        f"{where}: {server} refuses adapters with {' and '.join(refused)}, and no truncation "
        "removes them exactly",
        hint="; ".join(dict.fromkeys(fixes)),
    )


def check_fitted(target: Target, ranks: Sequence[int]) -> None:
    """Assert what the fit guarantees of the ranks about to be written.

    Raises
    ------
    AssertionError
        When a rank is above vLLM's bound (a bug, never a user's error).
    """
    bound = _bound(target)
    if bound is not None and max(ranks, default=0) > bound:
        raise AssertionError(f"--fit {target}: rank {max(ranks)} above {bound}")
