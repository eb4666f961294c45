"""What check's rules read of an audited adapter, and what they return when one is broken.

The rules depend on these protocols, not on the report model: an
:class:`~lora_audit.report.InspectReport` satisfies :class:`AuditedAdapter`, and
they return :class:`~lora_audit.findings.Finding` objects, the report's own finding type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from lora_audit.choices import AdapterFormat
from lora_audit.findings import ERROR, Finding

#: What a suggested ``compress`` of a PEFT DoRA adapter needs (it refuses one without).
DORA_FLAGS = "--base BASE"
#: What :data:`DORA_FLAGS` means, beside the suggested command.
DORA_NOTE = (
    "BASE: the base model's weights, which DoRA's magnitudes depend on, read with torch; "
    "or --allow-dora instead keeps the magnitudes as trained, an approximation"
)
#: … and for kohya/LyCORIS DoRA (``dora_scale``), which ``--base`` does not recompute.
DORA_SCALE_FLAGS = "--allow-dora"
DORA_SCALE_NOTE = (
    "--allow-dora keeps the dora_scale vectors as trained, an approximation: the base "
    "weights can recompute only PEFT's lora_magnitude_vector"
)


def dora_flags(adapter_format: str) -> tuple[str, str]:
    """The flags a suggested ``compress`` of a DoRA adapter needs to run, and what they
    mean: ``--base BASE`` for PEFT's magnitudes, ``--allow-dora`` for kohya/LyCORIS."""
    if adapter_format == AdapterFormat.PEFT:
        return DORA_FLAGS, DORA_NOTE
    return DORA_SCALE_FLAGS, DORA_SCALE_NOTE


class AuditedLayer(Protocol):
    """What the rules read of one layer (:class:`lora_audit.report.LayerReport` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def structure(self) -> str: ...
    @property
    def rank(self) -> int: ...
    @property
    def energy_rank(self) -> int: ...
    @property
    def params(self) -> int: ...
    @property
    def params_after(self) -> int: ...
    @property
    def wasted_params(self) -> int: ...
    @property
    def dora(self) -> bool: ...


class AuditedSummary(Protocol):
    """What the rules read of an adapter's summary (:class:`lora_audit.report.Summary`)."""

    @property
    def wasted_fraction(self) -> float: ...
    @property
    def recommended_rank(self) -> int: ...
    @property
    def nominal_rank(self) -> int: ...
    @property
    def lora_alpha(self) -> float | None: ...
    @property
    def rank_pattern(self) -> Mapping[str, int]: ...
    @property
    def advice_verdict(self) -> str | None: ...


class AuditedSource(Protocol):
    """Where the adapter came from (:class:`lora_audit.report.AdapterInfo`)."""

    @property
    def path(self) -> str: ...
    @property
    def format(self) -> str: ...


class AuditedAdapter(Protocol):
    """An adapter measured at the policy's τ (:class:`lora_audit.report.InspectReport`)."""

    @property
    def adapter(self) -> AuditedSource: ...
    @property
    def summary(self) -> AuditedSummary: ...
    @property
    def layers(self) -> Sequence[AuditedLayer]: ...


def untrained_adapter(report: AuditedAdapter) -> bool:
    """No layer is trained (``k_τ = 0`` everywhere: every ΔW = 0, as saved before training)."""
    return bool(report.layers) and all(layer.energy_rank == 0 for layer in report.layers)


#: What to do about an untrained adapter (one finding for the whole adapter).
UNTRAINED_FIX = (
    "train it (or find out why no layer receives a gradient); there is nothing to compress"
)


def untrained_violation(report: AuditedAdapter, *, rule: str, limit: float | int) -> Finding:
    """The one finding of an untrained adapter, under ``rule`` (its ``limit``)."""
    measured: float | int = 0 if rule == "min-rank-used" else 1.0
    return Finding(
        adapter=report.adapter.path,
        layer=None,
        rule=rule,
        measured=measured,
        limit=limit,
        message=(
            f"is untrained: all {len(report.layers)} layers have ΔW = 0 (every B is zero, as "
            "an adapter saved before training is)"
        ),
        fix=UNTRAINED_FIX,
        severity=ERROR,
    )
