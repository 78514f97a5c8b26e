"""A tiny checkpoint the serving engines accept (head_dim 64), SFT-trained to answer and stop."""

import pytest
import torch

from selfplay.config import SFTConfig, TinyModelConfig
from selfplay.sft import sft_train
from selfplay.tasks import ArithmeticTask
from selfplay.tiny_model import build_model, build_tokenizer

# vLLM's CPU attention wants a head size it has kernels for (64 here, as in the quickstart).
ENGINE_TINY = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=128)


@pytest.fixture(scope="session")
def engine_checkpoint(tmp_path_factory):
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(ENGINE_TINY, tok)
    prompts = ArithmeticTask(0, 500).train_prompts(0, 2000)
    examples = [(p, f"A:{p.answer}") for p in prompts]
    sft_train(model, tok, examples, SFTConfig(steps=120, batch_size=32, lr=1e-2), seed=0)
    path = tmp_path_factory.mktemp("engine-tiny")
    # A chat template that passes the user message through: chat and completions then agree.
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def engine_checkpoint_2(engine_checkpoint, tmp_path_factory):
    """The same architecture with every weight perturbed (what a training round produces)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(engine_checkpoint, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    path = tmp_path_factory.mktemp("engine-tiny-2")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(engine_checkpoint).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def forward_logprob():
    """Sum log-prob of a response by one unpadded float32 forward pass (a function)."""
    return _forward_logprob


def _forward_logprob(model, tokenizer, prompt: str, token_ids: list[int]) -> float:
    """Sum log-prob of a response by one unpadded float32 forward pass over prompt + response
    (the prompt's plain text, encoded with the tokenizer's special tokens)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    return float(logp.gather(1, torch.tensor(token_ids)[:, None]).sum())
