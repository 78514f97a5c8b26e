"""The driver's round state machine on a hand-made store: what finishing a round writes."""

from __future__ import annotations

import dataclasses

from sqlalchemy import select

from db import queries, summaries
from db.engine import make_engine, session_factory, transaction
from db.models import Round, RoundStatus, RoundSummaryRecord
from selfplay.config import parse_config
from selfplay.driver import run_round
from selfplay.progress import SilentReporter
from selfplay.stages import Context


class NoWork:
    """An executor whose stages find nothing left to do (the round's rows are all there)."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def run_step(self, ctx: Context, step: str, round_id: int) -> None:
        self.steps.append(step)


def test_finishing_a_round_stores_its_summary_equal_to_the_live_figures(seeded_url, tmp_path):
    engine = make_engine(seeded_url)
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        run = queries.get_run(s, "demo")
        rnd = queries.get_round(s, run.id, 1)
        rnd.status = RoundStatus.EVALUATING  # interrupted before it was marked done
        run_id, round_id = run.id, rnd.id
    cfg = parse_config({"run": {"output_dir": str(tmp_path)}})
    ctx = Context(cfg, sessions, run_id, SilentReporter())
    executor = NoWork()
    run_round(ctx, round_id, executor)
    assert executor.steps == ["evaluate"]
    with sessions() as s:
        rnd = s.get(Round, round_id)
        assert rnd.status == RoundStatus.DONE
        stored = summaries.round_summary(s, run_id, rnd.index)
        live = summaries.compute_round_summary(s, rnd)
        assert stored.summarized and not live.summarized
        assert stored == dataclasses.replace(live, summarized=True)
        assert (stored.pairs, stored.judgments, stored.judge_agreement) == (6, {"ok": 24}, 0.75)
        # Round 0 finished before summaries existed: none was written for it.
        assert s.scalars(select(RoundSummaryRecord.round_id)).all() == [round_id]
    # Finishing the round again replaces its summary instead of failing on the unique key.
    with transaction(sessions) as s:
        s.get(Round, round_id).status = RoundStatus.EVALUATING
    run_round(ctx, round_id, executor)
    with sessions() as s:
        assert s.scalars(select(RoundSummaryRecord.round_id)).all() == [round_id]
    engine.dispose()
