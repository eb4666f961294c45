"""Formats whose loader builds every layer at one rank (x-flux, mlx-lm): one check for both."""

from __future__ import annotations

from collections.abc import Mapping

from lora_audit.adapter import Adapter
from lora_audit.errors import UsageError


def require_one_rank(adapter: Adapter, new_ranks: Mapping[str, int], *, loader: str) -> int:
    """The one rank every layer has after compression (rewritten layers and kept ones).

    Parameters
    ----------
    new_ranks
        The new rank of each rewritten layer, by name.
    loader
        Who needs one rank, for the message (``"XLabs (x-flux)"``, ``"mlx-lm"``).

    Raises
    ------
    UsageError
        When the layers would get several ranks, so that ``loader`` could not load the file.
    """
    ranks = sorted({new_ranks.get(layer.name, layer.rank) for layer in adapter.layers})
    if len(ranks) > 1:
        raise UsageError(
            f"{adapter.tensor_file}: {loader} loads every layer at one rank, but the "
            f"compressed layers would have ranks {', '.join(map(str, ranks))}",
            hint=f"pass --rank K (K < {max(x.rank for x in adapter.layers)}) to give every "
            "layer the same rank",
        )
    return ranks[0]
