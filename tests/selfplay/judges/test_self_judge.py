"""The `self` judge: score parsing, repeats, and a real tiny policy whose answers do not parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfplay.config import TinyModelConfig, parse_config
from selfplay.generation.base import Sample, SamplingParams
from selfplay.generation.hf import HFBackend
from selfplay.judges import JudgeEnv, JudgeItem, Policy, make_judge
from selfplay.judges.self_judge import ADDITIVE_PROMPT, fill_template, parse_score
from selfplay.tasks.base import Prompt
from selfplay.tiny_model import build_model, build_tokenizer


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("The response is relevant. Score: 4", 4.0),
        ("**Score:** 3/5", 3.0),
        ("score = 4.5", 4.5),
        ("Score: 2\nOn reflection... Score: 5", 5.0),  # the last one wins
        ("  3  ", 3.0),
        ("3/5.", 3.0),
        ("Score: 7", None),  # outside 0–5
        ("I cannot judge this.", None),
        ("", None),
    ],
)
def test_parse_score(text: str, score: float | None):
    assert parse_score(text) == score


def test_template_fills_once_and_keeps_braces_in_texts():
    out = fill_template("Q={prompt} A={response} {other}", "{response}", "x{prompt}")
    assert out == "Q={response} A=x{prompt} {other}"
    with pytest.raises(Exception, match="must contain \\{response\\}"):
        parse_config({"judge": {"name": "self", "self_judge": {"prompt_template": "{prompt}"}}})


class ScriptedBackend:
    """A generation backend that answers from a script (records what it was asked)."""

    def __init__(self, answers: list[str]) -> None:
        self.answers, self.calls, self.loaded = answers, [], None

    def load(self, checkpoint_dir: str) -> None:
        self.loaded = checkpoint_dir

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Sample]]:
        self.calls.append((prompts, params))
        return [[Sample(a, [1] * len(a), 0.0, "stop")] for a in self.answers[: len(prompts)]]


def _self_judge():
    cfg = parse_config({"judge": {"name": "self", "repeats": 3}}).judge
    return make_judge(cfg, JudgeEnv(task=None, seed=7))


def test_scores_failures_and_a_seed_per_repeat():
    backend = ScriptedBackend(["Relevant and correct. Score: 4", "no idea"])
    judge = _self_judge()
    items = [JudgeItem(Prompt("Q: 2+2="), "4", {"repeat": 2}), JudgeItem(Prompt("Q: 1+1="), "3")]
    ok, failed = judge.judge(items, Policy(backend, "/ckpt/round-0"))
    assert (ok.status, ok.score) == ("ok", 4.0)
    assert ok.trace == {
        "judge_output": "Relevant and correct. Score: 4",
        "checkpoint": "/ckpt/round-0",
    }
    assert failed.status == "failed" and failed.score is None
    assert failed.trace["judge_output"] == "no idea"  # the raw answer is kept
    prompts, params = backend.calls[0]
    assert backend.loaded == "/ckpt/round-0"
    assert all(p.messages is None for p in prompts)  # one user turn, rendered by the backend
    assert "Question: Q: 2+2=\nResponse: 4\n" in prompts[0].text
    assert prompts[0].text.startswith(ADDITIVE_PROMPT.split("\n")[0])
    assert params.seed == 7 * 1000 + 2 and params.n == 1


def test_a_real_untrained_policy_gives_failed_judgments_with_its_text(tmp_path: Path):
    torch.manual_seed(0)
    tok = build_tokenizer()
    build_model(
        TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok
    ).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    judge = _self_judge()
    items = [JudgeItem(Prompt("Q: 2+2="), "4"), JudgeItem(Prompt("Q: 3+3="), "6")]
    verdicts = judge.judge(items, Policy(HFBackend(), str(tmp_path)))
    for v in verdicts:
        # A random model writes random characters: failed unless they happen to parse.
        assert v.status == "failed" or 0 <= v.score <= 5
        assert v.trace["checkpoint"] == str(tmp_path)
        assert isinstance(v.trace["judge_output"], str) and v.tokens is not None
    assert any(v.status == "failed" and v.trace["judge_output"] for v in verdicts)


def test_a_conversation_is_shown_as_its_turns_and_a_chat_policy_reads_the_ask_as_chat(
    instruct_model_dir: Path,
):
    backend = ScriptedBackend(["Score: 3"])
    conversation = Prompt.conversation([("system", "Be brief."), ("user", "What is 2 + 3?")])
    judge = _self_judge()
    (verdict,) = judge.judge([JudgeItem(conversation, "5")], Policy(backend, "/ckpt"))
    (asked,), _ = backend.calls[0]
    assert verdict.score == 3.0
    assert "### System:\nBe brief.\n\n### User:\nWhat is 2 + 3?\nResponse: 5" in asked.text
    # The real chat policy renders that ask as a user turn of its template.
    hf = HFBackend()
    hf.load(str(instruct_model_dir))
    assert hf.renderer.text(asked).startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nReview the user's question" in hf.renderer.text(asked)
