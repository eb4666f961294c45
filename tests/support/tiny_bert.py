"""The tiny BERT that the PEFT round-trip tests put LoRA layers on, built from a config.

Nothing is downloaded: two layers of width 32, random weights from a fixed seed. transformers
is imported on use, so a test module that skips without it can still import this one.
"""

from __future__ import annotations

from typing import Any


def bert_config() -> Any:
    """The configuration: 2 layers, hidden size 32, 2 heads, intermediate size 48."""
    import transformers

    return transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        vocab_size=64,
    )


def tiny_base() -> Any:
    """A ``BertModel`` of :func:`bert_config`, its weights drawn after ``manual_seed(0)``."""
    import torch
    import transformers

    torch.manual_seed(0)
    return transformers.BertModel(bert_config())
