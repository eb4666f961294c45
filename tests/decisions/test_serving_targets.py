"""The serving-target rules on plain objects: parsing, vLLM's allowed max_lora_rank values,
and which formats each server loads (no files, no torch)."""

from __future__ import annotations

import math

import pytest
from serving_doubles import Audited, Layer, Source

from lora_audit.decisions.serving_targets import (
    VLLM_DEFAULT_MAX_LORA_RANK,
    VLLM_MAX_LORA_RANKS,
    Target,
    parse_target,
    rule_names,
    target_violations,
)
from lora_audit.errors import UsageError

VLLM = Target(server="vllm", max_lora_rank=16)
LLAMA = Target(server="llama.cpp")


def test_parse_target() -> None:
    assert parse_target("vllm") == Target(server="vllm", max_lora_rank=16)
    assert VLLM_DEFAULT_MAX_LORA_RANK == 16
    assert parse_target("vllm:max-lora-rank=320").max_lora_rank == 320
    assert parse_target("llama.cpp") == LLAMA
    assert str(parse_target("vllm")) == "vllm:max-lora-rank=16"
    assert 12 not in VLLM_MAX_LORA_RANKS
    for bad in ("vllm:max-lora-rank=12", "vllm:max-lora-rank=1024", "ollama", "llama.cpp:x=1"):
        with pytest.raises(UsageError):
            parse_target(bad)


def test_a_clean_adapter_passes_every_target() -> None:
    report = Audited(layers=(Layer(rank=8, scale=2.0), Layer(rank=8, scale=2.0)))
    targets = [VLLM, LLAMA, Target(server="peft")]
    assert target_violations(report, targets) == []
    assert "vllm-max-lora-rank" in rule_names(targets)


def test_rank_over_the_limit_counts_layers_and_names_a_server_value() -> None:
    report = Audited(
        adapter=Source(rank=16, lora_alpha=16.0),
        layers=(Layer(rank=16, scale=1.0), Layer(rank=16, scale=1.0)),
    )
    [finding] = target_violations(report, [Target(server="vllm", max_lora_rank=8)])
    assert (finding.rule, finding.measured, finding.limit) == ("vllm-max-lora-rank", 16, 8)
    assert "2 of 2 layers" in finding.message and "--max-lora-rank 16" in finding.message
    assert finding.fix.endswith("-o adapters/a-vllm8 --fit vllm:max-lora-rank=8")


def test_rslora_one_scale_is_alpha_over_root_r() -> None:
    """vLLM: lora_alpha / √r with use_rslora; a rank_pattern layer at alpha / √4 differs."""
    s8, s4 = 16 / math.sqrt(8), 16 / math.sqrt(4)
    report = Audited(
        adapter=Source(use_rslora=True),
        layers=(Layer(rank=8, scale=s8), Layer(rank=4, scale=s4)),
    )
    rules = {v.rule: v for v in target_violations(report, [VLLM, LLAMA])}
    assert rules["vllm-one-scale"].measured == 1
    assert rules["llama.cpp-scale"].measured == 2  # llama.cpp: alpha / r, never √r
    assert rules["llama.cpp-scale"].fix.endswith("--fit llama.cpp")
    assert rules["vllm-one-scale"].fix.endswith("--fit vllm:max-lora-rank=16")


def test_llama_cpp_reads_alpha_over_each_layers_rank() -> None:
    """Plain LoRA with a rank_pattern (alpha global): alpha / r_ℓ is what PEFT applies too."""
    report = Audited(layers=(Layer(rank=8, scale=2.0), Layer(rank=4, scale=4.0)))
    rules = {v.rule for v in target_violations(report, [VLLM, LLAMA])}
    assert rules == {"vllm-one-scale"}


def test_formats() -> None:
    kohya = Audited(adapter=Source(format="kohya"), layers=(Layer(rank=8, scale=2.0),))
    assert {v.rule for v in target_violations(kohya, [VLLM, LLAMA])} == {
        "vllm-format",
        "llama.cpp-format",
    }
    gguf = Audited(adapter=Source(format="gguf"), layers=(Layer(rank=8, scale=2.0),))
    assert [v.rule for v in target_violations(gguf, [VLLM, LLAMA])] == ["vllm-format"]


def test_the_fix_names_an_output_beside_the_input() -> None:
    layers = (Layer(rank=32, scale=0.5),)
    for path, out in (("a/b", "a/b-vllm16"), ("a/x.safetensors", "a/x-vllm16.safetensors")):
        report = Audited(adapter=Source(path=path, rank=32), layers=layers)
        [finding] = target_violations(report, [VLLM])
        assert finding.fix == f"lora-audit compress {path} -o {out} --fit vllm:max-lora-rank=16"
    here = Audited(adapter=Source(path=".", rank=32), layers=layers)
    [finding] = target_violations(here, [VLLM])
    assert finding.fix.startswith("lora-audit compress . -o /")
    assert finding.fix.endswith("-vllm16 --fit vllm:max-lora-rank=16")
    # --fit refuses DoRA: the fix says what has to go first
    dora = Audited(adapter=Source(rank=32, use_dora=True), layers=layers)
    fix = {v.rule: v.fix for v in target_violations(dora, [VLLM])}["vllm-max-lora-rank"]
    assert fix.startswith("once the adapter is without DoRA: lora-audit compress ")
