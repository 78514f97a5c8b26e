"""The pair stage: pairs built from the round's judgments, stored once, with its metrics."""

from __future__ import annotations

from sqlalchemy import func, select

from db.models import Metric, Pair
from selfplay.stages.generate import generate_round, insert_prompts
from selfplay.stages.judge import judge_round
from selfplay.stages.pair import pair_round


def test_pairs_follow_the_scores_and_a_rerun_adds_none(round_store, length_judge):
    store = round_store(
        judge={"name": "length_judge:Length"},
        generation={"samples_per_prompt": 4},
        pairing={"builder": "max_min", "max_pairs_per_prompt": 1},
    )
    ctx = store.context()
    try:
        insert_prompts(ctx, store.round_id)
        generate_round(ctx, store.round_id)
        judge_round(ctx, store.round_id)
        pair_round(ctx, store.round_id)
        with store.sessions() as s:
            pairs = s.scalars(select(Pair)).all()
            metrics = dict(
                s.execute(select(Metric.name, Metric.value).where(Metric.stage == "pair")).all()
            )
        assert pairs and all(p.builder == "max_min" for p in pairs)
        assert all(p.chosen_score > p.rejected_score for p in pairs)  # ties make no pair
        assert len({p.prompt_id for p in pairs}) == len(pairs)  # one per prompt at most
        assert metrics["pairs"] == len(pairs) and metrics["judged"] == 8 * 4
        pair_round(ctx, store.round_id)
        with store.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Pair)) == len(pairs)
    finally:
        ctx.close()
