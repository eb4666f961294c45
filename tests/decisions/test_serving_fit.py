"""``compress --fit``'s rules on plain objects: the rank rule each target gives, where it pads,
and what it refuses (no files, no torch)."""

from __future__ import annotations

import pytest
from serving_doubles import Audited, Layer, Source

from lora_audit.decisions.compress_ranks import RankRule, select_ranks
from lora_audit.decisions.serving_fit import check_fitted, fit_refusal, fit_rule, fit_uniform
from lora_audit.decisions.serving_targets import Target, fit_command, parse_target
from lora_audit.errors import UsageError

VLLM16 = parse_target("vllm")
LLAMA = parse_target("llama.cpp")
PEFT = parse_target("peft")


def test_without_a_rule_each_target_keeps_what_it_allows() -> None:
    ranks = [64, 8, 32]
    assert fit_rule(VLLM16, None, ranks) == RankRule(mode="rank", value=16.0, max_rank=16)
    assert fit_rule(parse_target("vllm:max-lora-rank=320"), None, ranks).value == 320
    for target in (LLAMA, PEFT):
        assert fit_rule(target, None, ranks) == RankRule(mode="rank", value=64.0)
    assert [fit_uniform(t) for t in (VLLM16, LLAMA, PEFT)] == [False, True, False]


def test_the_vllm_bound_clamps_every_rule() -> None:
    """Under rank ≤ N the Eckart–Young optimum keeps each layer's top min(r, N) values."""
    import numpy as np

    spectra = [np.linspace(10, 1, 64), np.linspace(3, 1, 8), np.full(32, 2.0)]
    costs = [128, 128, 128]
    for rule in (
        RankRule(mode="energy", value=0.999),
        RankRule(mode="ratio", value=100.0),
        RankRule(mode="budget", value=1e9),
        RankRule(mode="rank", value=16, max_rank=64),
    ):
        fitted = fit_rule(VLLM16, rule, [64, 8, 32])
        assert fitted.max_rank == 16 and fitted.mode == rule.mode
        assert select_ranks(spectra, costs=costs, rule=fitted) == [16, 8, 16]
    assert fit_rule(LLAMA, RankRule(mode="energy", value=0.9), [8]).max_rank is None


@pytest.mark.parametrize(
    ("rule", "flag"),
    [
        (RankRule(mode="rank", value=32), "--rank 32"),
        (RankRule(mode="energy", value=0.9, min_rank=17), "--min-rank 17"),
    ],
)
def test_a_rule_above_the_bound_is_a_contradiction(rule: RankRule, flag: str) -> None:
    with pytest.raises(UsageError, match=f"{flag} contradicts --fit vllm:max-lora-rank=16"):
        fit_rule(VLLM16, rule, [64])


def test_refusals_name_what_and_what_to_do() -> None:
    plain = Audited(layers=(Layer(rank=8, scale=2.0),))
    for target in (VLLM16, LLAMA, PEFT):
        assert fit_refusal(target, plain.adapter, plain.layers) is None
    kohya = Source(format="kohya")
    for target in (VLLM16, LLAMA, PEFT):
        refusal = fit_refusal(target, kohya, plain.layers)
        assert refusal is not None and "kohya" in str(refusal)
    dora = (Layer(rank=8, scale=2.0, dora=True),)
    refusal = fit_refusal(VLLM16, Source(), dora)
    assert refusal is not None and "DoRA" in str(refusal) and "use_dora" in (refusal.hint or "")
    assert fit_refusal(PEFT, Source(), dora) is None  # PEFT loads DoRA (--base truncates it)
    saved = Source(modules_to_save=("classifier",), passthrough_tensors=2)
    for target in (VLLM16, LLAMA):
        refusal = fit_refusal(target, saved, plain.layers)
        assert refusal is not None and "modules_to_save (classifier)" in str(refusal)
    assert fit_refusal(PEFT, saved, plain.layers) is None
    refusal = fit_refusal(VLLM16, Source(), plain.layers, bias="all")
    assert refusal is not None and "bias 'all'" in str(refusal)
    assert fit_refusal(LLAMA, Source(), plain.layers, bias="all") is None
    extra = fit_refusal(LLAMA, Source(passthrough_tensors=3), plain.layers)
    assert extra is not None and "3 tensors that are not LoRA factors" in str(extra)


def test_fit_command_and_the_fitted_ranks() -> None:
    assert fit_command("a/b", Target(server="vllm", max_lora_rank=32)) == (
        "lora-audit compress a/b -o a/b-vllm32 --fit vllm:max-lora-rank=32"
    )
    assert (
        fit_command("x y", LLAMA) == "lora-audit compress 'x y' -o 'x y-llama.cpp' --fit llama.cpp"
    )
    check_fitted(VLLM16, [16, 8])
    check_fitted(LLAMA, [512])
    with pytest.raises(AssertionError):
        check_fitted(VLLM16, [17])
