"""A tensor source that also serves tensors derived from stored ones, under virtual keys.

PEFT variants whose factors are not stored as one ``(B, A)`` pair per layer are read through
it: an AdaLoRA layer's ``A`` is ``lora_A ⊙ lora_E``; a MoE expert's ``A`` and ``B`` are slices
of the ``target_parameters`` factors shared by all experts. The layer then is a plain
``LORA`` layer whose ``a_key``/``b_key`` name the virtual keys, and every consumer that goes
through :meth:`Adapter.load_factors` reads it unchanged. Real keys pass straight through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lora_audit.formats.safetensors_io import SafetensorsSource, StoredTensor

#: Builds a derived tensor from the base source (array in, array out: torch or numpy).
Derive = Callable[[SafetensorsSource], Any]


@dataclass(frozen=True, kw_only=True)
class DerivedSource:
    """``base``'s tensors, plus ``derived[key](base)`` for each virtual key.

    Attributes
    ----------
    base
        The safetensors file the adapter was read from.
    derived
        Virtual key → function of ``base`` that returns the tensor (stored dtype, or the
        dtype of the arithmetic on stored tensors).
    """

    base: SafetensorsSource
    derived: Mapping[str, Derive]

    def get(self, key: str) -> Any:
        """The tensor under ``key``: derived when ``key`` is virtual, else as stored."""
        make = self.derived.get(key)
        return self.base.get(key) if make is None else make(self.base)

    def raw(self, key: str) -> StoredTensor:
        """Stored bytes of a real key (virtual keys have none)."""
        return self.base.raw(key)


def scaled_rows(a_key: str, e_key: str) -> Derive:
    """AdaLoRA's ``A ⊙ E``: ``lora_A`` (r, in) with row ``i`` times ``lora_E[i, 0]``."""

    def make(base: SafetensorsSource) -> Any:
        a, e = base.get(a_key), base.get(e_key)
        return a * e.reshape(-1, 1)

    return make


def expert_rows(key: str, *, expert: int, rank: int) -> Derive:
    """PEFT ``ParamWrapper``'s ``lora_A`` (r·E, in) → expert ``e``'s rows ``e·r … e·r+r-1``."""

    def make(base: SafetensorsSource) -> Any:
        return base.get(key)[expert * rank : (expert + 1) * rank]

    return make


def expert_columns(key: str, *, expert: int, experts: int) -> Derive:
    """PEFT ``ParamWrapper``'s ``lora_B`` (out, r·E) → expert ``e``'s columns ``e, e+E, …``.

    PEFT reshapes ``lora_B`` to ``(out, r, E)``: column ``j·E + e`` is rank ``j`` of expert
    ``e``.
    """

    def make(base: SafetensorsSource) -> Any:
        return base.get(key)[:, expert::experts]

    return make
