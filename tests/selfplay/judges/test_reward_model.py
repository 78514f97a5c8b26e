"""The reward_model judge on a tiny locally built sequence-classification Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForSequenceClassification

from selfplay.config import TinyModelConfig, parse_config
from selfplay.judges import JudgeEnv, JudgeItem, make_judge
from selfplay.tasks.base import Prompt
from selfplay.tiny_model import build_reward_model, build_tokenizer

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
