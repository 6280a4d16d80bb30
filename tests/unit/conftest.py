"""Fixtures of the engine tests: one random 2-layer Qwen2 and its native twin per test module."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def random_hf():
    """A random transformers Qwen2ForCausalLM: vocabulary 53, 2 layers, GQA (4 heads, 2 K/V), untied
    head; initializer_range 0.4 so that sampled tokens vary."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=53, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.4, pad_token_id=0, tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def random_native(random_hf):
    """rlvr's native model with random_hf's weights."""
    from rlvr.models.native import NativeCausalLM

    return NativeCausalLM.from_hf(random_hf)
