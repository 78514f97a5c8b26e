"""The train stage: the log-prob sources each loss needs, computed once; the round's
checkpoint saved atomically and linked; a finished round trains no more."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import queries
from db.models import Checkpoint, ResponseLogprob, Round
from selfplay.checkpoints import round_checkpoint_dir
from selfplay.config import parse_config
from selfplay.stages.generate import generate_round, insert_prompts
from selfplay.stages.judge import judge_round
from selfplay.stages.pair import pair_round
from selfplay.stages.train import ensure_logprobs, logprob_sources, train_round


@pytest.mark.parametrize(
    ("training", "sources"),
    [
        ({"loss": "dpo", "reference": "sft"}, {"ref": "sft"}),
        ({"loss": "dpo", "reference": "previous"}, {"ref": "previous"}),
        ({"loss": "dno"}, {"ref": "previous"}),
        ({"loss": "inpo", "reference": "sft"}, {"ref": "sft", "prev": "previous"}),
        ({"loss": "simpo"}, {}),
    ],
)
def test_each_loss_names_its_log_prob_sources(training: dict, sources: dict):
    assert logprob_sources(parse_config({"training": training})) == sources


def test_a_round_trains_once_and_its_log_probs_are_stored_once(
    round_store, length_judge, tmp_path: Path
):
    store = round_store(
        judge={"name": "length_judge:Length"},
        training={"loss": "dpo", "reference": "sft", "batch_size": 4, "max_steps": 2},
    )
    ctx = store.context()
    try:
        insert_prompts(ctx, store.round_id)
        generate_round(ctx, store.round_id)
        judge_round(ctx, store.round_id)
        pair_round(ctx, store.round_id)
        with store.sessions() as s:
            pairs = queries.training_pairs(s, store.round_id)
        assert pairs
        first = ensure_logprobs(ctx, store.round_id, "sft", pairs)
        assert ensure_logprobs(ctx, store.round_id, "sft", pairs) == first
        with store.sessions() as s:
            stored = s.scalar(select(func.count()).select_from(ResponseLogprob))
        assert (
            stored
            == len(first)
            == len({p.chosen_id for p in pairs} | {p.rejected_id for p in pairs})
        )

        train_round(ctx, store.round_id)
        target = round_checkpoint_dir(ctx.cfg.run.output_dir, 0)
        assert (target / "config.json").exists() and not target.with_name("round-0000.tmp").exists()
        with store.sessions() as s:
            rnd = s.get(Round, store.round_id)
            assert rnd.output_checkpoint.path == str(target)
            checkpoints = s.scalar(select(func.count()).select_from(Checkpoint))
        mtime = (target / "config.json").stat().st_mtime_ns
        train_round(ctx, store.round_id)  # done: returns at once
        assert (target / "config.json").stat().st_mtime_ns == mtime
        with store.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Checkpoint)) == checkpoints
            assert s.scalar(select(func.count()).select_from(ResponseLogprob)) == stored
    finally:
        ctx.close()


def test_the_round_checkpoint_is_saved_in_model_dtype(round_store, length_judge):
    from selfplay.precision import checkpoint_dtype

    store = round_store(
        judge={"name": "length_judge:Length"},
        model={"dtype": "bfloat16"},
        training={"loss": "dpo", "batch_size": 4, "max_steps": 1},
    )
    ctx = store.context()
    try:
        insert_prompts(ctx, store.round_id)
        generate_round(ctx, store.round_id)
        judge_round(ctx, store.round_id)
        pair_round(ctx, store.round_id)
        train_round(ctx, store.round_id)
    finally:
        ctx.close()
    with store.sessions() as s:
        initial, trained = s.scalars(select(Checkpoint).order_by(Checkpoint.round_index)).all()
    assert checkpoint_dtype(initial.path) == "float32"  # the tiny model is built in float32
    assert checkpoint_dtype(trained.path) == "bfloat16"
