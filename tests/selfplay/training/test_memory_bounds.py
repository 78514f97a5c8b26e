"""Memory bounds that leave the optimisation as it is: micro-batches cut to a token budget
accumulate to the unsplit batch's step, and gradient checkpointing recomputes the same
activations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfplay.config import TinyModelConfig
from selfplay.tiny_model import build_model, build_tokenizer
from selfplay.training.config import TrainingConfig
from selfplay.training.trainer import PairExample, load_trainable, train_on_pairs

PAD = 0
TRAINING = {"lr": 1e-2, "batch_size": 6, "max_steps": 4, "epochs": 3, "nll_weight": 0.5}


def tiny_pairs() -> list[PairExample]:
    gen = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(4, 90, (n,), generator=gen).tolist()

    return [
        PairExample(ids(3 + i % 4), ids(2 + i % 3) + [2], ids(1 + i % 5) + [2], -3.0, -4.0)
        for i in range(10)
    ]


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(
        TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok
    )
    model.save_pretrained(tmp_path / "policy")
    return tmp_path / "policy"


def train(policy: Path, **overrides: object) -> tuple[list[dict], list[torch.Tensor], list[int]]:
    """Each step's metrics, the final weights and the tokens of each forward's inputs."""
    cfg = TrainingConfig(**TRAINING, **overrides)
    model = load_trainable(str(policy), cfg, "cpu")
    tokens: list[int] = []
    model.get_decoder().register_forward_pre_hook(
        lambda _, args, kwargs: tokens.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    history: list[dict] = []
    train_on_pairs(model, tiny_pairs(), cfg, PAD, seed=1, on_step=lambda s, m: history.append(m))
    return history, [p.detach().clone() for p in model.parameters()], tokens


def assert_same_training(a: tuple, b: tuple) -> None:
    (history_a, weights_a, _), (history_b, weights_b, _) = a, b
    for got, want in zip(history_a, history_b, strict=True):
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    for x, y in zip(weights_a, weights_b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shared_prompt", [True, False])
def test_a_token_budget_splits_each_micro_batch_into_the_same_step(policy, shared_prompt):
    whole = train(policy, shared_prompt=shared_prompt)
    split = train(policy, shared_prompt=shared_prompt, max_tokens_per_micro_batch=20)
    assert_same_training(split, whole)
    # Pairs here hold 8 to 14 tokens: each piece has one or two, so there are more forwards,
    # each smaller than the unsplit batch's.
    assert len(split[2]) > 2 * len(whole[2])
    assert max(split[2]) < min(whole[2])


def test_gradient_checkpointing_takes_the_same_steps(policy):
    plain = train(policy)
    cfg = TrainingConfig(**TRAINING, gradient_checkpointing=True)
    assert load_trainable(str(policy), cfg, "cpu").is_gradient_checkpointing
    assert_same_training(train(policy, gradient_checkpointing=True), plain)
