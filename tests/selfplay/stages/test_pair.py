"""The pair stage: pairs built from the round's judgments, stored once, with its metrics."""

from __future__ import annotations

from sqlalchemy import func, select
from typer.testing import CliRunner

from db.engine import transaction
from db.models import Judgment, Metric, Pair, Prompt, Response, Round
from db.summaries import round_summaries
from selfplay.cli import app
from selfplay.driver import round_line
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


def _judged_round(store, scores: list[tuple[float, str]], judge: str = "verifier") -> None:
    """Give every prompt of the round two responses with these (score, finish_reason) rows,
    judged ok by `judge`: responses as generation stores them, without generating."""
    with transaction(store.sessions) as s:
        rnd = s.get(Round, store.round_id)
        prompts = s.scalars(select(Prompt).where(Prompt.round_id == rnd.id)).all()
        for p in prompts:
            for k, (score, reason) in enumerate(scores):
                r = Response(
                    round_id=rnd.id,
                    prompt_id=p.id,
                    sample_index=k,
                    checkpoint_id=rnd.policy_checkpoint_id,
                    text=f"answer {k}",
                    token_ids=[5, 6],
                    num_tokens=2,
                    logprob=-1.0,
                    finish_reason=reason,
                )
                s.add(r)
                s.flush()
                s.add(Judgment(response_id=r.id, judge=judge, status="ok", score=score))


def test_truncated_responses_are_dropped_and_a_round_without_pairs_says_why(round_store):
    store = round_store(pairing={"builder": "max_min", "truncated": "drop"})  # the default
    ctx = store.context()
    try:
        insert_prompts(ctx, store.round_id)
        _judged_round(store, [(1.0, "length"), (0.0, "stop")])
        pair_round(ctx, store.round_id)
    finally:
        ctx.close()
    with store.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Pair)) == 0
        reason = s.get(Round, store.round_id).no_pairs_reason
        metrics = dict(
            s.execute(select(Metric.name, Metric.value).where(Metric.stage == "pair")).all()
        )
        (summary,) = round_summaries(s, store.run_id)
    assert reason == "0 pairs: no prompt has two judged responses (8 truncated dropped)"
    assert metrics["truncated"] == 8 and metrics["judged"] == 16
    assert (summary.truncated_responses, summary.truncated_share) == (8, 0.5)
    assert round_line(summary).startswith(
        "round 0: 0 pairs: no prompt has two judged responses (8 truncated dropped) "
        "(8 of 16 responses truncated), held-out accuracy"
    )
    url = store.cfg.store.url
    status = CliRunner().invoke(app, ["status", "--db", url], env={"COLUMNS": "300"})
    assert status.exit_code == 0, status.output
    assert "why no pairs" in status.output and "8 (50%)" in status.output
    assert "no prompt has two judged responses (8 truncated dropped)" in status.output
    stats = CliRunner().invoke(app, ["db", "stats", "--db", url], env={"COLUMNS": "300"})
    assert "truncated" in stats.output and "8 (50%)" in stats.output, stats.output


def test_penalized_truncated_responses_pair_below_finished_ones(round_store):
    store = round_store(pairing={"truncated": "penalize", "missing_eos_penalty": 2.0})
    ctx = store.context()
    try:
        insert_prompts(ctx, store.round_id)
        _judged_round(store, [(1.0, "length"), (0.0, "stop")])
        pair_round(ctx, store.round_id)
    finally:
        ctx.close()
    with store.sessions() as s:
        pairs = s.scalars(select(Pair)).all()
        assert s.get(Round, store.round_id).no_pairs_reason is None
        assert len(pairs) == 8
        # The truncated 1.0 counts as -1.0: the finished 0.0 is chosen over it.
        for p in pairs:
            assert s.get(Response, p.chosen_id).finish_reason == "stop"
            assert (p.chosen_score, p.rejected_score) == (0.0, -1.0)
