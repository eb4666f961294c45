"""How a written PEFT adapter reads in the servers it is deployed to (``compress``, ``merge``).

PEFT rebuilds every layer at its own rank and scale (``rank_pattern``/``alpha_pattern``);
vLLM and llama.cpp read one ``lora_alpha`` for the whole adapter and apply their own rule.
The writer folds every layer's scale into its factors so that one scale holds for all of them;
what remains (per-layer ranks under llama.cpp's ``alpha / rank`` rule, features a server
refuses) is stated here, one :class:`ServerCheck` per server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The servers whose scale rule the output is checked against.
Server = Literal["peft", "vllm", "llama.cpp"]
#: ``exact``: ΔW as PEFT applies it; ``differs``: loaded, with other numbers;
#: ``refused``: the server does not load this adapter.
ServerVerdict = Literal["exact", "differs", "refused"]


@dataclass(frozen=True, kw_only=True)
class ServerCheck:
    """One server's reading of the output.

    Attributes
    ----------
    server
        ``"peft"``, ``"vllm"`` or ``"llama.cpp"``.
    verdict
        ``"exact"``, ``"differs"`` or ``"refused"``.
    rule
        The server's scale rule, as its source applies it.
    detail
        Why, in one sentence (layers affected, what is refused).
    fix
        What to pass instead to get an exact output there (``None`` when exact, or when no
        option of this command helps).
    """

    server: Server
    verdict: ServerVerdict
    rule: str
    detail: str
    fix: str | None = None


@dataclass(frozen=True, kw_only=True)
class Serving:
    """The one scale of a PEFT output and how each server reads it.

    Attributes
    ----------
    scale
        The scale every layer of the output has: ``lora_alpha / r`` of the written config
        (no ``use_rslora``); ``alpha_pattern`` entries, written only beside ``rank_pattern``
        entries, restate it (``alpha_ℓ / r_ℓ`` is the same number).
    ranks
        The distinct ranks of the written layers, ascending.
    uniform_rank
        ``True`` when every layer was zero-padded to one rank (``--uniform-rank``).
    rescaled_layers
        Layers kept at their rank whose factors were rescaled to the one scale (rounded to
        their stored dtype; every other kept layer is bit for bit the input's).
    checks
        One per server.
    """

    scale: float
    ranks: tuple[int, ...]
    uniform_rank: bool
    rescaled_layers: int
    checks: tuple[ServerCheck, ...]
