"""A two-layer Llama built from a config (seed 0): the model of the training-integration tests."""

from __future__ import annotations

import torch
import transformers


def tiny_llama() -> transformers.PreTrainedModel:
    """``LlamaForCausalLM`` with hidden size 32, 2 layers, 4 heads (2 KV), vocabulary 64."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config)
