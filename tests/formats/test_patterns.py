"""rank_pattern / alpha_pattern matching must agree with PEFT's own function."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_audit.formats.patterns import match_pattern, pattern_key_for, pattern_keys

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


MODULES = [
    "bert.encoder.layer.0.attention.self.query",
    "bert.encoder.layer.0.attention.output.dense",
    "bert.encoder.layer.0.output.dense",
    "bert.pooler.dense",
    "pooler.dense",
    "dense",
    "fc1",
    "text_model.encoder.layers.0.q_proj",
    "vision_model.encoder.layers.0.q_proj",
    "encoder.layers.0.q_proj",
]


def test_pattern_keys_match_exactly_their_module_in_peft() -> None:
    keys = pattern_keys(MODULES)
    for name, key in keys.items():
        hits = [m for m in MODULES if peft_other.get_pattern_key([key], m) == key]
        assert hits == [name], (name, key, hits)
    assert keys["bert.encoder.layer.0.output.dense"] == r"encoder\.layer\.0\.output\.dense"
    assert keys["pooler.dense"] == r"^pooler\.dense$"
    assert pattern_key_for("bert.pooler.dense") == r"pooler\.dense"


_SEGMENT = st.sampled_from(["model", "layers", "0", "1", "q_proj", "dense", "encoder", "a", ""])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_SEGMENT, min_size=1, max_size=5).map(".".join), min_size=1,
                max_size=12, unique=True))  # fmt: skip
def test_pattern_keys_agree_with_matching_every_module(names: list[str]) -> None:
    # the linear-time suffix count gives the same keys as trying PEFT's rule on every module
    keys = pattern_keys(names)
    for name in names:
        brute_unique = [m for m in names if match_pattern({pattern_key_for(name): True}, m)]
        expected = pattern_key_for(name) if brute_unique == [name] else None
        if expected is not None:
            assert keys[name] == expected
        else:
            assert keys[name].startswith("^")
        hits = [m for m in names if peft_other.get_pattern_key([keys[name]], m) == keys[name]]
        assert hits == [name], (name, keys[name], hits)


def test_ordinary_keys_pass_the_backtracking_screen() -> None:
    from lora_audit.regex_guard import regex_problem

    keys = [k for patterns in PATTERNS for k in patterns]
    keys += list(pattern_keys(MODULES).values())
    keys += [r"layers\.\d+\.self_attn\.(q|k|v)_proj", r"model\.layers\.[0-9]{1,2}\..*proj"]
    assert [k for k in keys if regex_problem(k) is not None] == []
