"""The reward_model judge on a tiny locally built sequence-classification Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaForSequenceClassification,
)

from selfplay.config import TinyModelConfig, parse_config
from selfplay.judges import JudgeEnv, JudgeItem, make_judge
from selfplay.tasks.base import Prompt
from selfplay.tiny_model import build_reward_model, build_tokenizer
from tests.chat_models import BOS, save_reward_model

TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    tok = build_tokenizer()
    build_reward_model(TINY, tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _judge(path: Path, batch_size: int):
    cfg = parse_config(
        {
            "judge": {
                "name": "reward_model",
                "reward_model": {"path": str(path), "batch_size": batch_size},
            }
        }
    ).judge
    return make_judge(cfg, JudgeEnv(task=None))


ITEMS = [
    JudgeItem(Prompt("Q: 2+2="), "4"),
    JudgeItem(Prompt("Q: 2+2="), "5"),
    JudgeItem(Prompt("Q: 17+25="), "42 is the answer"),
    JudgeItem(Prompt("Q: 1+1="), ""),
    JudgeItem(Prompt("Q: 9+9="), "18"),
]


def test_scores_are_deterministic_and_do_not_depend_on_padding(rm_dir: Path):
    one = _judge(rm_dir, batch_size=1).judge(ITEMS)
    padded = _judge(rm_dir, batch_size=5).judge(ITEMS)
    assert all(v.status == "ok" for v in one + padded)
    assert [v.score for v in padded] == pytest.approx([v.score for v in one], abs=1e-5)
    # Different responses to one prompt get different rewards.
    assert one[0].score != pytest.approx(one[1].score, abs=1e-6)


def test_a_classifier_with_several_labels_is_refused(tmp_path: Path):
    tok = build_tokenizer()
    config = build_reward_model(TINY, tok).config
    config.num_labels = 3
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="expected a model with one output"):
        _judge(tmp_path, batch_size=2)


# -- chat reward models (tests/chat_models.py): the judge renders with the RM's own template --

CONVERSATION = Prompt.conversation(
    [
        ("system", "Answer in one line."),
        ("user", "Q: 2+3="),
        ("assistant", "5"),
        ("user", "Now double it."),
    ]
)


def _direct_logit(path: Path, messages: list[dict[str, str]]) -> float:
    """The reward model's logit for a conversation, by transformers alone (one unpadded pass)."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    ids = tok.apply_chat_template(messages, tokenize=True)["input_ids"]
    with torch.no_grad():
        return float(model(torch.tensor([ids])).logits[0, 0])


@pytest.fixture(scope="module")
def bos_rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_reward_model(tmp_path_factory.mktemp("rm-bos"), "bos")


def test_a_bos_template_gets_exactly_one_bos(bos_rm_dir: Path):
    judge = _judge(bos_rm_dir, batch_size=2)
    bos_id = judge.tokenizer.convert_tokens_to_ids(BOS)
    for prompt in (Prompt("Give me three tips about mountain hiking."), CONVERSATION):
        ids = judge.token_ids(JudgeItem(prompt, "Start small."))
        assert ids.count(bos_id) == 1 and ids[0] == bos_id
    messages = CONVERSATION.chat() + [{"role": "assistant", "content": "10"}]
    [verdict] = judge.judge([JudgeItem(CONVERSATION, "10")])
    assert verdict.status == "ok"
    assert verdict.score == pytest.approx(_direct_logit(bos_rm_dir, messages), abs=1e-5)


def test_the_reward_model_scores_the_whole_conversation(reward_model_dir: Path):
    judge = _judge(reward_model_dir, batch_size=4)
    ids = judge.token_ids(JudgeItem(CONVERSATION, "10"))
    assert judge.tokenizer.decode(ids) == (
        "<|im_start|>system\nAnswer in one line.<|im_end|>\n"
        "<|im_start|>user\nQ: 2+3=<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
        "<|im_start|>user\nNow double it.<|im_end|>\n<|im_start|>assistant\n10<|im_end|>\n"
    )
    plain = Prompt(CONVERSATION.text)  # the last user turn alone
    conv, alone = judge.judge([JudgeItem(CONVERSATION, "10"), JudgeItem(plain, "10")])
    assert conv.score != pytest.approx(alone.score, abs=1e-6)
    messages = CONVERSATION.chat() + [{"role": "assistant", "content": "10"}]
    assert conv.score == pytest.approx(_direct_logit(reward_model_dir, messages), abs=1e-5)


def test_a_tokenizer_without_pad_pads_with_the_configs_pad_id(tmp_path: Path):
    path = save_reward_model(tmp_path / "rm-nopad", "nopad")
    assert AutoTokenizer.from_pretrained(path).pad_token is None
    items = [JudgeItem(Prompt("Tips for hiking?"), "x" * n) for n in (1, 7, 30)]
    items.append(JudgeItem(CONVERSATION, "10"))
    one = _judge(path, batch_size=1).judge(items)
    padded = _judge(path, batch_size=4).judge(items)
    assert all(v.status == "ok" for v in one + padded)
    assert [v.score for v in padded] == pytest.approx([v.score for v in one], abs=1e-5)


def test_reward_model_dtype(reward_model_dir: Path):
    items = [JudgeItem(CONVERSATION, "10"), JudgeItem(Prompt("Tips?"), "Walk slowly.")]
    auto = _judge(reward_model_dir, batch_size=2)  # auto on a CPU: float32
    assert auto.model.dtype == torch.float32
    cfg = parse_config(
        {
            "judge": {
                "name": "reward_model",
                "reward_model": {"path": str(reward_model_dir), "dtype": "bfloat16"},
            }
        }
    ).judge
    half = make_judge(cfg, JudgeEnv(task=None))
    assert half.model.dtype == torch.bfloat16
    got, want = half.judge(items), auto.judge(items)
    assert all(isinstance(v.score, float) for v in got)
    assert [v.score for v in got] == pytest.approx([v.score for v in want], abs=0.05)
