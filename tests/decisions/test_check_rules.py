"""The gate's rules: which findings a report gets under which policy."""

from __future__ import annotations

import dataclasses
import math

import pytest
from reports import inspect_report, layer_report, lean_report, wasteful_report

from lora_audit.decisions.check_rules import (
    RULES,
    SETTINGS,
    Policy,
    Setting,
    active_rules,
    evaluate,
    merge,
)
from lora_audit.report import InspectReport


def test_defaults_are_documented_values() -> None:
    assert Policy().as_dict() == {
        "energy": 0.99,
        "coverage": 0.9,
        "max_waste": 0.5,
        "max_layer_waste": 1.0,
        "min_rank_used": 1,
    }
    assert [r.name for r in active_rules(Policy())] == ["max-waste", "min-rank-used"]


def test_every_setting_is_a_policy_field_and_every_rule_has_a_setting() -> None:
    fields = [f.name for f in dataclasses.fields(Policy)]
    assert [s.field for s in SETTINGS] == fields
    keys = {s.key for s in SETTINGS}
    assert all(rule.name in keys for rule in RULES)


def test_coverage_default_is_the_advice_rules_quantile() -> None:
    from lora_audit.decisions.advice_rule import DEFAULT_ADVICE_RULE

    assert Policy().coverage == DEFAULT_ADVICE_RULE.quantile


def untrained_report() -> InspectReport:
    layers = [layer_report(f"model.layers.{i}.q_proj", rank=8, k=0) for i in range(6)]
    return inspect_report("adapters/untrained", layers, recommended_rank=0)


def test_an_untrained_adapter_gets_one_finding_not_one_per_layer() -> None:
    findings = evaluate(untrained_report(), policy=Policy())
    assert [(f.rule, f.layer) for f in findings] == [("min-rank-used", None)]
    assert "untrained" in findings[0].message and "all 6 layers" in findings[0].message
    assert "compress" not in findings[0].fix.replace("nothing to compress", "")
    # with min-rank-used off, max-waste reports it, still once and without a compress command
    off = evaluate(untrained_report(), policy=Policy(min_rank_used=0))
    assert [(f.rule, f.layer) for f in off] == [("max-waste", None)]
    assert "untrained" in off[0].message and "lora-audit compress" not in off[0].fix


def test_lean_adapter_passes() -> None:
    assert evaluate(lean_report(), policy=Policy()) == ()


def test_wasteful_adapter_gets_adapter_and_untrained_layer_findings() -> None:
    findings = evaluate(wasteful_report(), policy=Policy())
    assert [(f.rule, f.layer) for f in findings] == [
        ("max-waste", None),
        ("min-rank-used", "model.layers.2.q_proj"),
    ]
    waste = findings[0]
    assert waste.adapter == "adapters/wasteful"
    assert waste.measured == pytest.approx(0.9375)
    assert waste.limit == 0.5
    assert waste.severity == "error"
    assert "93.8%" in waste.message and "τ=0.99" in waste.message
    assert waste.fix == (
        "retrain at r=2, lora_alpha=2, or run "
        "`lora-audit compress adapters/wasteful -o OUT --energy 0.99`"
    )
    untrained = findings[1]
    assert (untrained.measured, untrained.limit) == (0, 1)
    assert "untrained" in untrained.message and "target_modules" in untrained.fix


def test_limit_equal_to_measured_passes() -> None:
    report = wasteful_report()
    exact = Policy(max_waste=report.summary.wasted_fraction, min_rank_used=0)
    assert evaluate(report, policy=exact) == ()
    below = dataclasses.replace(exact, max_waste=math.nextafter(exact.max_waste, 0))
    assert [f.rule for f in evaluate(report, policy=below)] == ["max-waste"]


def test_max_layer_waste_measures_each_trained_layer() -> None:
    report = wasteful_report()
    findings = evaluate(report, policy=Policy(max_waste=1.0, max_layer_waste=0.9, min_rank_used=0))
    # k=2 of 16 wastes 0.875 (≤ 0.9, passes); k=1 wastes 0.9375; k=0 is min-rank-used's business
    assert [(f.layer, f.measured) for f in findings] == [("model.layers.1.q_proj", 0.9375)]
    assert findings[0].fix.startswith("give this layer r=1 through rank_pattern")
    assert "uses 1 of its rank 16" in findings[0].message


def test_min_rank_used_above_one_flags_nearly_dead_layers() -> None:
    report = wasteful_report()
    findings = evaluate(report, policy=Policy(max_waste=1.0, min_rank_used=2))
    assert [(f.layer, f.measured) for f in findings] == [
        ("model.layers.1.q_proj", 1),
        ("model.layers.2.q_proj", 0),
    ]
    assert "uses energy rank 1 at τ=0.99, below the minimum 2" in findings[0].message


def test_rules_switched_off() -> None:
    off = Policy(max_waste=1.0, max_layer_waste=1.0, min_rank_used=0)
    assert active_rules(off) == ()
    assert evaluate(wasteful_report(), policy=off) == ()


def test_recommended_rank_equal_to_nominal_suggests_only_compress() -> None:
    layers = [layer_report("a", rank=4, k=4), layer_report("b", rank=4, k=1, out=200, inp=200)]
    report = inspect_report("x", layers, recommended_rank=4)
    (finding,) = evaluate(report, policy=Policy())
    assert finding.fix == "run `lora-audit compress x -o OUT --energy 0.99`"


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("energy", 0.99, True),
        ("energy", 1, True),
        ("energy", 0, False),
        ("energy", 1.5, False),
        ("energy", math.nan, False),
        ("energy", True, False),
        ("energy", "0.9", False),
        ("max-waste", 0, True),
        ("max-waste", 1.0, True),
        ("max-waste", -0.1, False),
        ("min-rank-used", 0, True),
        ("min-rank-used", 7, True),
        ("min-rank-used", -1, False),
        ("min-rank-used", 1.0, False),
        ("min-rank-used", False, False),
    ],
)
def test_setting_validation(key: str, value: object, ok: bool) -> None:
    setting: Setting = next(s for s in SETTINGS if s.key == key)
    problem = setting.problem(value)
    assert (problem is None) == ok
    if not ok:
        assert problem is not None and problem.startswith("must be ")


def test_merge_converts_types() -> None:
    policy = merge(Policy(), {"max_waste": 1, "energy": 0.9})
    assert policy.max_waste == 1.0 and isinstance(policy.max_waste, float)
    assert policy.energy == 0.9 and policy.min_rank_used == 1
