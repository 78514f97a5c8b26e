from collections.abc import Callable

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def _tiny_llama(seed: int = 0, **overrides: object) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=20,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **overrides,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama() -> Callable[..., LlamaForCausalLM]:
    """A factory of small random Llamas, identical for equal seeds (no downloads)."""
    return _tiny_llama
