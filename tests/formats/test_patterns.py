"""rank_pattern / alpha_pattern matching must agree with PEFT's own function."""

from __future__ import annotations

import pytest

from lora_audit.formats.patterns import match_pattern, pattern_key_for

peft_other = pytest.importorskip("peft.utils.other")

NAMES = [
    "bert.encoder.layer.0.attention.self.query",
    "bert.encoder.layer.5.attention.output.dense",
    "bert.encoder.layer.5.output.dense",
    "bert.encoder.layer.15.output.dense",
    "model.layers.0.self_attn.q_proj",
    "model.layers.10.self_attn.q_proj",
    "query",
    "fc1",
]
PATTERNS = [
    {"query": 4},
    {"layer.5.output.dense": 16},
    {r"layer\.5\.output\.dense": 16, "dense": 2},
    {"dense": 2, "layer.5.output.dense": 16},  # order matters: first match wins
    {r"^bert\.encoder\.layer\.0\.attention\.self\.query$": 3},
    {"base_model.model.bert.encoder.layer.0.attention.self.query": 3},
    {"q_proj": 8, r"layers\.1\d\..*": 2},
    {"layers.1.self_attn.q_proj": 5},
    {"": 1},
]


@pytest.mark.parametrize("patterns", PATTERNS)
@pytest.mark.parametrize("name", NAMES)
def test_match_agrees_with_peft(patterns: dict[str, int], name: str) -> None:
    key = peft_other.get_pattern_key(list(patterns), name)
    expected = patterns.get(key)
    assert match_pattern(patterns, name) == expected


@pytest.mark.parametrize("name", NAMES)
def test_pattern_key_matches_only_its_module(name: str) -> None:
    key = pattern_key_for(name)
    for other in NAMES:
        hit = peft_other.get_pattern_key([key], other) == key
        assert hit == (other == name or other.endswith("." + name)), (key, other)
