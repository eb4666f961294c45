"""A real full fine-tune of a small BERT, built from a config and trained in a second.

:func:`full_finetune` saves a BERT (one layer, width 96: wide enough that the Krylov path, not
only the small-matrix full SVD, is exercised) and a copy trained with a few SGD steps on
*every* weight (a regression loss on random tokens) as two ``model.safetensors`` directories.
Nothing is downloaded; transformers is imported on use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def finetune_config() -> Any:
    """One layer, hidden size 96, 2 heads, intermediate size 192, vocabulary 64."""
    import transformers

    return transformers.BertConfig(
        hidden_size=96,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=192,
        vocab_size=64,
        max_position_embeddings=32,
    )


def finetune_base() -> Any:
    """The base ``BertModel``, its weights drawn after ``manual_seed(0)``."""
    import torch
    import transformers

    torch.manual_seed(0)
    return transformers.BertModel(finetune_config())


def full_finetune(root: Path, *, steps: int = 6, dtype: Any = None) -> tuple[Path, Path]:
    """``(base_dir, tuned_dir)`` under ``root``; ``dtype`` (e.g. ``torch.bfloat16``) for both."""
    import torch

    base = finetune_base()
    tuned = finetune_base()
    tuned.train()
    opt = torch.optim.SGD(tuned.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 64, (4, 8), generator=gen)
        loss = (tuned(input_ids=ids).last_hidden_state.mean(dim=1)[:, :4] - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    paths = []
    for name, model in (("base", base), ("tuned", tuned)):
        if dtype is not None:
            model = model.to(dtype)
        path = root / name
        model.save_pretrained(path, safe_serialization=True)
        paths.append(path)
    return paths[0], paths[1]
