"""lora-audit: how much of a LoRA adapter's rank is used, and how to give the rest back.

Distributed as ``lora-rank-audit`` (the PyPI name ``lora-audit`` is another project's).

The Python API (``docs/python-api.md``), loaded on first use so that ``import lora_audit``
stays light::

    import lora_audit

    report = lora_audit.inspect("path/to/adapter", energy=0.95)   # an InspectReport
    report.summary.wasted_fraction, report.to_dict()
    lora_audit.inspect_model(peft_model)                           # a PEFT model in memory
    lora_audit.inspect_many(["runs/"])                             # every adapter below
    lora_audit.check(["a", "b"], max_waste=0.3).status             # "pass" / "fail" / "error"
    lora_audit.compress("a", output="a-small", energy=0.99)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: The distribution name (``pip install lora-rank-audit``); the command is ``lora-audit``.
DISTRIBUTION = "lora-rank-audit"
#: Where the project lives; ``lora-audit --version`` prints it.
HOME = "https://github.com/lora-rank-audit/lora-rank-audit"

#: The public functions, defined in :mod:`lora_audit.api` and imported on first use.
_API = ("inspect", "inspect_model", "inspect_many", "check", "compress", "inspect_full", "extract")

__all__ = [
    "DISTRIBUTION",
    "HOME",
    "__version__",
    "check",
    "compress",
    "extract",
    "inspect",
    "inspect_full",
    "inspect_many",
    "inspect_model",
]

if TYPE_CHECKING:
    from lora_audit.api import (
        check,
        compress,
        extract,
        inspect,
        inspect_full,
        inspect_many,
        inspect_model,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        from lora_audit import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lora_audit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
