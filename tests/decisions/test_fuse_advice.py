"""The advice line of ``--fuse-into`` and the parsing of its schemes."""

from __future__ import annotations

import pytest

from lora_audit.decisions.fuse_advice import KEPT_ENOUGH, fuse_advice, parse_schemes
from lora_audit.errors import UsageError


def test_the_issue_example() -> None:
    advice = fuse_advice({"q8_0": 0.97, "q4_0": 0.99}, {"q8_0": 0.975, "q4_0": 0.23})
    assert advice.startswith(
        "fusing into q4_0 keeps 23% of this update — serve it unfused, or fuse into q8_0 (97%)"
    )
    assert "merged at full precision and then quantized once, q4_0 keeps 99%" in advice


def test_every_scheme_safe() -> None:
    advice = fuse_advice({"q8_0": 1.0, "nf4": 0.95}, {"q8_0": 0.999, "nf4": 0.93})
    assert advice == (
        "fusing into nf4 keeps 93% of this update (q8_0 99%): safe to fuse into every "
        "scheme checked"
    )


def test_percentages_round_down_so_a_failing_scheme_never_reads_as_the_threshold() -> None:
    just_below = KEPT_ENOUGH - 1e-4
    advice = fuse_advice({"q4_0": just_below}, {"q4_0": just_below})
    assert advice == "fusing into q4_0 keeps 89% of this update — serve it unfused"


def test_several_failing_and_none_passing() -> None:
    advice = fuse_advice({"q4_0": 0.5, "nf4": 0.6}, {"q4_0": 0.4, "nf4": 0.7})
    assert advice == (
        "fusing into q4_0 keeps 40% and into nf4 keeps 60% of this update — serve it "
        "unfused (no scheme checked keeps 90%)"
    )


def test_no_update() -> None:
    assert "changes nothing" in fuse_advice({"q8_0": None}, {"q8_0": None})


def test_parse_schemes() -> None:
    assert parse_schemes("nf4, Q8_0,q4-0,nf4") == ("q8_0", "q4_0", "nf4")
    assert parse_schemes("mlx_4bit,q4_0") == ("q4_0", "mlx-4bit")
    for bad in ("q3_k", "", ","):
        with pytest.raises(UsageError, match="--fuse-into"):
            parse_schemes(bad)
