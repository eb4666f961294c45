"""The early-warning rules of a training run, on planted measurements."""

from __future__ import annotations

from lora_audit.decisions.training_alerts import AlertRules, Measurement, alerts

RULES = AlertRules()


def measured(step: int, sigma1: dict[str, float], k: int = 8, r: int = 16) -> Measurement:
    return Measurement(
        step=step,
        sigma1=sigma1,
        rank=dict.fromkeys(sigma1, r),
        energy_rank={name: (k if s > 0 else 0) for name, s in sigma1.items()},
        untrained=tuple(name for name, s in sigma1.items() if s == 0),
    )


def test_untrained_layers_wait_for_the_stated_step_and_name_the_causes() -> None:
    early = measured(RULES.untrained_after_steps - 1, {"a": 1.0, "b": 0.0})
    assert alerts(None, early, rules=RULES) == []
    late = measured(RULES.untrained_after_steps, {"a": 1.0, "b": 0.0})
    (alert,) = alerts(None, late, rules=RULES)
    assert alert.kind == "untrained"
    assert "1 of 2 LoRA layers are still untrained (ΔW = 0) after 50 steps: b." in alert.message
    for cause in ("lora_B frozen", "learning rate of 0", "ZeRO-3"):
        assert cause in alert.message
    assert alerts(None, late, rules=RULES, fired=frozenset({"untrained"})) == []


def test_a_spike_needs_a_baseline_past_the_warm_up_and_above_zero() -> None:
    # PEFT starts from B = 0: the first interval is an infinite jump and is never a spike
    assert alerts(measured(100, {"a": 0.0}), measured(200, {"a": 5.0}), rules=RULES) == [
        a for a in alerts(None, measured(200, {"a": 5.0}), rules=RULES)
    ]
    before_warm_up = measured(RULES.spike_after_steps - 1, {"a": 1.0})
    assert alerts(before_warm_up, measured(300, {"a": 10.0}), rules=RULES) == []
    steady = measured(RULES.spike_after_steps, {"a": 1.0, "b": 1.0})
    assert alerts(steady, measured(300, {"a": 2.9, "b": 1.5}), rules=RULES) == []
    (alert,) = alerts(steady, measured(300, {"a": 3.5, "b": 12.0}), rules=RULES)
    assert alert.kind == "spike"
    assert "σ₁ of b jumped 12× between steps 200 and 300 (1 → 12)" in alert.message
    assert "more than 3× in one interval" in alert.message


def test_energy_concentrated_in_a_quarter_of_the_rank_is_a_hint() -> None:
    layers = {"a": 1.0, "b": 1.0, "c": 1.0}
    assert alerts(None, measured(200, layers, k=5, r=16), rules=RULES) == []  # 31% > 25%
    (alert,) = alerts(None, measured(200, layers, k=4, r=16), rules=RULES)
    assert alert.kind == "concentrated"
    assert "median energy rank 4 of r = 16" in alert.message
    assert alerts(None, measured(199, layers, k=1, r=16), rules=RULES) == []  # before the step
    assert alerts(None, measured(200, layers, k=1, r=4), rules=RULES) == []  # r below the floor
