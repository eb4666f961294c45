"""The gate's policy and its rules: an audited adapter in, findings out.

``lora-audit check`` measures each adapter exactly as ``inspect`` does, at the policy's τ, and
then asks every active rule whether the result breaks it. Rules read only the numbers named by
the :class:`AuditedAdapter` protocol (an inspect report satisfies it); they never touch
tensors, files or the report model, and return :class:`~lora_audit.findings.Finding` objects,
which ``commands.check`` puts in the report as they are.

The rules
---------
Write ``r`` for a layer's nominal rank, ``k_τ`` for its energy rank at τ (the smallest k that
keeps a fraction τ of ‖ΔW‖_F²) and ``in + out`` for the parameters one unit of its rank costs.

``max-waste`` (default 0.5)
    The adapter's wasted fraction, ``Σ(r − k_τ)(in + out) / Σ r(in + out)`` over all layers:
    the share of its LoRA parameters that lie beyond what each layer uses (the inspect
    report's ``summary.wasted_fraction``). One finding for the whole adapter when it exceeds
    the limit. A limit of 1 turns the rule off. For LoHa, LoKr and Tucker layers only the
    parameters that ``compress`` can remove count (rewriting the layer as LoRA at ``k_τ``,
    done only when that is smaller), so the fix it names always removes what was measured.
``max-layer-waste`` (default 1, off)
    One layer's wasted share of its rank, ``(r − k_τ) / r`` (structured layers: of its
    parameters, as above). One finding per trained layer
    above the limit; untrained layers (``k_τ = 0``) are left to ``min-rank-used``. Off by
    default because a uniform rank makes per-layer waste normal: the adapter-wide rule
    already weighs each layer by what it costs.
``min-rank-used`` (default 1)
    The smallest energy rank a layer may have. The default flags layers with ``k_τ = 0``,
    i.e. ``ΔW = 0``: untrained, frozen or dead modules that still cost their full rank.
    Higher values also flag layers that learned almost nothing. 0 turns the rule off.
    An adapter with no trained layer gets one finding for the whole adapter (``max-waste``'s
    when this rule is off), not one per layer.

A rule fires when the measured value is strictly beyond the limit, so a limit equal to the
measured value passes. Adding a rule means adding a :class:`Policy` field, its
:class:`Setting` in :data:`SETTINGS`, and a :class:`Rule` in :data:`RULES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lora_audit.choices import AdapterFormat
from lora_audit.decisions.advice_rule import DEFAULT_ADVICE_RULE
from lora_audit.decisions.audited import (
    AuditedAdapter,
    AuditedLayer,
    dora_flags,
    untrained_adapter,
    untrained_violation,
)
from lora_audit.decisions.retrain_advice import next_power_of_two
from lora_audit.findings import ERROR, Finding


@dataclass(frozen=True, kw_only=True)
class Policy:
    """What an adapter must meet to pass ``lora-audit check``.

    Attributes
    ----------
    energy
        τ in (0, 1]: energy ranks keep at least this fraction of each layer's ‖ΔW‖_F².
    coverage
        Fraction of layers the advised retraining rank covers (used in the fix text), (0, 1]:
        the advice rule's quantile unless overridden (``decisions.advice_rule``).
    max_waste
        Largest wasted fraction of the adapter's LoRA parameters, in [0, 1]; 1 is off.
    max_layer_waste
        Largest wasted fraction ``(r − k_τ) / r`` of one layer's rank, in [0, 1]; 1 is off.
    min_rank_used
        Smallest energy rank a layer may have, ≥ 0; 1 flags untrained layers, 0 is off.
    """

    energy: float = 0.99
    coverage: float = DEFAULT_ADVICE_RULE.quantile
    max_waste: float = 0.5
    max_layer_waste: float = 1.0
    min_rank_used: int = 1

    def as_dict(self) -> dict[str, float | int]:
        """The policy as ``{field: value}``, in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One policy setting: its flag / file key, type and valid range.

    Attributes
    ----------
    field
        The :class:`Policy` attribute.
    key
        The name on the command line (``--key``) and in policy files.
    integer
        Whether the value is an integer (else any real number).
    low, high
        The valid range; ``high`` is ``None`` when unbounded.
    low_open
        Whether ``low`` itself is excluded.
    """

    field: str
    key: str
    integer: bool
    low: float
    high: float | None
    low_open: bool = False

    @property
    def range_text(self) -> str:
        """What a valid value is: ``a number in (0, 1]`` or ``an integer ≥ 0``."""
        if self.integer:
            return f"an integer ≥ {self.low:g}"
        high = "∞)" if self.high is None else f"{self.high:g}]"
        return f"a number in {'(' if self.low_open else '['}{self.low:g}, {high}"

    def problem(self, value: object) -> str | None:
        """Why ``value`` is not valid for this setting, or ``None`` when it is."""
        numeric = int if self.integer else (int, float)
        if isinstance(value, numeric) and not isinstance(value, bool):
            number = value  # not float(): an integer of 400 digits would overflow
            low_ok = number > self.low if self.low_open else number >= self.low
            if low_ok and (self.high is None or number <= self.high):  # NaN fails low_ok
                return None
        return f"must be {self.range_text}"


#: Every policy setting, in the order the report lists them.
SETTINGS: tuple[Setting, ...] = (
    Setting(field="energy", key="energy", integer=False, low=0.0, high=1.0, low_open=True),
    Setting(field="coverage", key="coverage", integer=False, low=0.0, high=1.0, low_open=True),
    Setting(field="max_waste", key="max-waste", integer=False, low=0.0, high=1.0),
    Setting(field="max_layer_waste", key="max-layer-waste", integer=False, low=0.0, high=1.0),
    Setting(field="min_rank_used", key="min-rank-used", integer=True, low=0.0, high=None),
)

SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


def merge(policy: Policy, values: dict[str, float | int]) -> Policy:
    """``policy`` with the fields named in ``values`` (by field name) replaced.

    Values are converted to the field's type (an integer ``max-waste = 1`` becomes 1.0);
    validate them first with :meth:`Setting.problem`.
    """
    by_field = {s.field: s for s in SETTINGS}
    changes: dict[str, float | int] = {
        name: int(value) if by_field[name].integer else float(value)
        for name, value in values.items()
    }
    return dataclasses.replace(policy, **changes)  # type: ignore[arg-type]


RuleCheck = Callable[[AuditedAdapter, Policy], Iterator[Finding]]


@dataclass(frozen=True, kw_only=True)
class Rule:
    """A gate rule: a name, the policy setting it reads, and the function that applies it.

    Attributes
    ----------
    name
        The rule's name in findings (``"max-waste"``); also its setting's key.
    description
        One line for documentation and reports.
    active
        Whether the policy turns the rule on.
    check
        Yields a :class:`~lora_audit.findings.Finding` for each rule broken by an adapter.
    """

    name: str
    description: str
    active: Callable[[Policy], bool]
    check: RuleCheck


def _tau(policy: Policy) -> str:
    return f"{policy.energy:g}"


def _compress_fix(report: AuditedAdapter, policy: Policy) -> str:
    if report.adapter.format == AdapterFormat.GGUF:  # compress refuses GGUF: name the route
        return (
            f"run `lora-audit compress PEFT_ADAPTER -o OUT --energy {_tau(policy)}` on the "
            "adapter this GGUF was converted from, then convert OUT with convert_lora_to_gguf.py"
        )
    if any(layer.dora for layer in report.layers):  # compress refuses DoRA without them
        flags, note = dora_flags(report.adapter.format)
        return (
            f"run `lora-audit compress {report.adapter.path} -o OUT --energy {_tau(policy)} "
            f"{flags}` ({note})"
        )
    return f"run `lora-audit compress {report.adapter.path} -o OUT --energy {_tau(policy)}`"


def _max_waste(report: AuditedAdapter, policy: Policy) -> Iterator[Finding]:
    s = report.summary
    measured = s.wasted_fraction
    if measured <= policy.max_waste:
        return
    if untrained_adapter(report):  # one finding: min-rank-used's, or this one when it is off
        if policy.min_rank_used <= 0:
            yield untrained_violation(report, rule="max-waste", limit=policy.max_waste)
        return
    if s.advice_verdict is not None:  # inspect's verdict: "keep" even with a rank_pattern
        retrain = s.advice_verdict == "retrain"
    else:
        retrain = s.recommended_rank < s.nominal_rank or bool(s.rank_pattern)
    if retrain:
        alpha = f", lora_alpha={s.lora_alpha:g}" if s.lora_alpha is not None else ""
        pattern = (
            " with the rank_pattern from `lora-audit inspect --format json`"
            if s.rank_pattern
            else ""
        )
        fix = f"retrain at r={s.recommended_rank}{alpha}{pattern}, or "
        fix += _compress_fix(report, policy)
    else:
        fix = _compress_fix(report, policy)
    yield Finding(
        adapter=report.adapter.path,
        layer=None,
        rule="max-waste",
        measured=measured,
        limit=policy.max_waste,
        message=(
            f"{measured:.1%} of the adapter's LoRA parameters lie beyond each layer's energy "
            f"rank at τ={_tau(policy)} (limit {policy.max_waste:.1%})"
        ),
        fix=fix,
        severity=ERROR,
    )


def _layer_waste(layer: AuditedLayer) -> float:
    """The share of the layer's parameters ``compress --energy τ`` removes; ``(r − k_τ)/r`` for
    plain LoRA, and for a LoHa/LoKr/Tucker layer only what rewriting it as LoRA saves."""
    return layer.wasted_params / layer.params if layer.params else 0.0


def _max_layer_waste(report: AuditedAdapter, policy: Policy) -> Iterator[Finding]:
    for layer in report.layers:
        measured = _layer_waste(layer)
        if layer.energy_rank == 0 or measured <= policy.max_layer_waste:
            continue
        limit = f"(limit {policy.max_layer_waste:.1%})"
        if layer.structure == "lora":
            target = min(next_power_of_two(layer.energy_rank), layer.rank)
            message = (
                f"uses {layer.energy_rank} of its rank {layer.rank} at τ={_tau(policy)}: "
                f"{measured:.1%} of the rank is wasted {limit}"
            )
            fix = (
                f"give this layer r={target} through rank_pattern when retraining, or "
                f"{_compress_fix(report, policy)}"
            )
        else:  # waste > 0: compress rewrites it as plain LoRA at k_τ, which is smaller
            message = (
                f"{layer.structure} layer of inner rank {layer.rank} needs {layer.energy_rank} "
                f"at τ={_tau(policy)}: as plain LoRA it keeps {layer.params_after:,} of its "
                f"{layer.params:,} parameters, {measured:.1%} wasted {limit}"
            )
            fix = _compress_fix(report, policy)
        yield Finding(
            adapter=report.adapter.path,
            layer=layer.name,
            rule="max-layer-waste",
            measured=measured,
            limit=policy.max_layer_waste,
            message=message,
            fix=fix,
            severity=ERROR,
        )


def _min_rank_used(report: AuditedAdapter, policy: Policy) -> Iterator[Finding]:
    if untrained_adapter(report):  # one finding for the adapter, not one per layer
        yield untrained_violation(report, rule="min-rank-used", limit=policy.min_rank_used)
        return
    for layer in report.layers:
        if layer.energy_rank >= policy.min_rank_used:
            continue
        if layer.energy_rank == 0:
            message = (
                f"is untrained (ΔW = 0): energy rank 0, below the minimum {policy.min_rank_used}"
            )
            fix = "drop it from target_modules, or find out why it receives no gradient"
        else:
            message = (
                f"uses energy rank {layer.energy_rank} at τ={_tau(policy)}, below the minimum "
                f"{policy.min_rank_used}"
            )
            fix = "drop it from target_modules if it is not needed, or check its learning rate"
        yield Finding(
            adapter=report.adapter.path,
            layer=layer.name,
            rule="min-rank-used",
            measured=layer.energy_rank,
            limit=policy.min_rank_used,
            message=message,
            fix=fix,
            severity=ERROR,
        )


#: The rules, in the order findings are listed.
RULES: tuple[Rule, ...] = (
    Rule(
        name="max-waste",
        description="wasted fraction of the adapter's LoRA parameters at τ",
        active=lambda p: p.max_waste < 1.0,
        check=_max_waste,
    ),
    Rule(
        name="max-layer-waste",
        description="wasted fraction (r − k_τ)/r of one trained layer's rank",
        active=lambda p: p.max_layer_waste < 1.0,
        check=_max_layer_waste,
    ),
    Rule(
        name="min-rank-used",
        description="smallest energy rank a layer may have (1 flags untrained layers)",
        active=lambda p: p.min_rank_used > 0,
        check=_min_rank_used,
    ),
)


def active_rules(policy: Policy) -> tuple[Rule, ...]:
    """The rules ``policy`` turns on, in :data:`RULES` order."""
    return tuple(rule for rule in RULES if rule.active(policy))


def evaluate(report: AuditedAdapter, *, policy: Policy) -> tuple[Finding, ...]:
    """Every finding of every active rule on one adapter's report.

    Parameters
    ----------
    report
        The adapter's inspect report, measured at ``policy.energy``.
    policy
        Limits to apply.

    Returns
    -------
    findings
        In rule order, then in the report's layer order; empty when the adapter passes.
    """
    return tuple(finding for rule in active_rules(policy) for finding in rule.check(report, policy))
