"""PEFT adapters initialised from the base weights and saved without conversion.

With ``init_lora_weights`` set to ``pissa`` (``pissa_niter_N``), ``olora``, ``corda`` or
``lora_ga``, PEFT moves the principal part of each weight into ``B·A`` at initialisation and
*subtracts it from the base*: the trained ``B·A`` is an update to that modified base, not to
the original weights, so its spectrum is not the fine-tune's update. ``loftq`` likewise pairs
the adapter with a quantised residual base. ``save_pretrained(...,
path_initial_model_for_weight_conversion=<initial adapter dir>)`` converts such an adapter
into a plain LoRA of rank 2r relative to the original base and saves its config with
``init_lora_weights = true``; converted adapters are ordinary LoRA.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: ``init_lora_weights`` values whose saved ``B·A`` is relative to a modified base.
_CONVERTIBLE = ("pissa", "olora", "corda", "lora_ga")


def base_relative_init(config: Mapping[str, Any]) -> str | None:
    """The ``init_lora_weights`` that makes ``B·A`` relative to a modified base, or ``None``."""
    value = config.get("init_lora_weights")
    if not isinstance(value, str):
        return None
    name = value.lower()
    if name == "loftq" or any(name.startswith(p) for p in _CONVERTIBLE):
        return value
    return None


def init_warnings(config: Mapping[str, Any], *, where: str) -> list[str]:
    """A warning, for the report and stderr, when the config says B·A is not the update."""
    init = base_relative_init(config)
    if init is None:
        return []
    if init.lower() == "loftq":
        fix = (
            "the adapter belongs with the LoftQ-quantised base it was trained on; audit it "
            "against that base, or merge it there and compare with the original weights"
        )
    else:
        fix = (
            "to audit the true update, save it again with PEFT: model.save_pretrained(dir, "
            "path_initial_model_for_weight_conversion=<the adapter as initialised, before "
            "training>), which writes a plain LoRA (rank 2r) relative to the original base"
        )
    return [
        f"{where}: init_lora_weights = {init!r}: the adapter was initialised from the base "
        "weights and saved without conversion, so B·A is the update to a modified base "
        "(its principal part was moved out of the weights), not the change to the original "
        f"model; the spectra below are those of B·A, not of the fine-tune's update. {fix}"
    ]
