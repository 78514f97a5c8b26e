"""A round over the chat policy (tests/chat_models.py, the no-pad tokenizer) with conversation
prompts from JSONL: what generation sampled after is what reference scoring and training see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from db import queries
from db.models import Response
from selfplay.stages.generate import generate_round, insert_prompts
from selfplay.stages.judge import judge_round
from selfplay.stages.pair import pair_round
from selfplay.stages.train import ensure_logprobs, pair_prompt, train_round

LINES = [
    {"prompt": [{"role": "user", "content": "Give me three tips about baking bread."}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]},
    {
        "messages": [
            {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "The answer is 5."},
            {"role": "user", "content": "What is 4 + 4?"},
        ]
    },
    {"prompt": "Explain the ocean to a child in two sentences."},
]


@pytest.fixture
def chat_round(round_store, length_judge, tmp_path: Path, chat_model_nopad_dir: Path):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    return round_store(
        judge={"name": "length_judge:Length"},
        model={"path": str(chat_model_nopad_dir)},
        task={"name": "jsonl", "path": str(data), "prompts_per_round": 4},
        training={"loss": "dpo", "reference": "sft", "batch_size": 2, "max_steps": 2},
    )


def test_reference_log_probs_of_round_0_are_the_sampled_ones_and_it_trains(chat_round):
    ctx = chat_round.context()
    try:
        insert_prompts(ctx, chat_round.round_id)
        generate_round(ctx, chat_round.round_id)
        judge_round(ctx, chat_round.round_id)
        pair_round(ctx, chat_round.round_id)
        with chat_round.sessions() as s:
            pairs = queries.training_pairs(s, chat_round.round_id)
            sampled = dict(s.execute(select(Response.id, Response.logprob)).all())
        assert pairs and any(p.prompt_messages for p in pairs)
        assert pair_prompt(pairs[0]).chat()[-1]["role"] == "user"
        # Round 0's policy is the SFT model: its reference log-probs, scored from the stored
        # conversations, are the log-probs the backend reported while sampling.
        ref = ensure_logprobs(ctx, chat_round.round_id, "sft", pairs)
        assert list(ref.values()) == pytest.approx([sampled[i] for i in ref], abs=1e-3)
        train_round(ctx, chat_round.round_id)  # a tokenizer without a pad token trains
    finally:
        ctx.close()
