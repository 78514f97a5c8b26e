"""The judge stage: one judgment per response and repeat, resumable chunk by chunk; siblings
for judges that ask for them; the meta-evaluation stored as metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import Judgment, Metric, Response
from selfplay.stages.generate import generate_round, insert_prompts
from selfplay.stages.judge import (
    judge_response_ids,
    judge_round,
    missing_judgments,
    store_judge_eval,
)

SIBLINGS_JUDGE = """
from selfplay.judges import BaseJudge, Verdict


class CountsSiblings(BaseJudge):
    name = "counts_siblings"
    needs_siblings = True

    def __init__(self, cfg, env):
        pass

    def judge(self, items):
        return [Verdict("ok", score=float(len(i.extra["siblings"]))) for i in items]
"""


@pytest.fixture
def siblings_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "siblings_judge.py").write_text(SIBLINGS_JUDGE)
    monkeypatch.syspath_prepend(str(tmp_path))


def _generated(store):
    ctx = store.context()
    insert_prompts(ctx, store.round_id)
    generate_round(ctx, store.round_id)
    return ctx


def test_every_response_is_judged_once_per_repeat_and_a_rerun_judges_nothing(round_store):
    store = round_store(judge={"name": "verifier", "repeats": 2})
    ctx = _generated(store)
    try:
        chunks = missing_judgments(ctx, store.round_id)
        # 16 responses, chunks of a generation block's worth (4 prompts × 2 samples), 2 repeats.
        assert [(repeat, len(chunk)) for repeat, chunk in chunks] == [
            (0, 8),
            (0, 8),
            (1, 8),
            (1, 8),
        ]
        first = [r.id for r, _ in chunks[0][1]]
        assert judge_response_ids(ctx, store.round_id, first) == 8
        assert judge_response_ids(ctx, store.round_id, first) == 0  # a chunk delivered twice
        judge_round(ctx, store.round_id)
        assert missing_judgments(ctx, store.round_id) == []
        with store.sessions() as s:
            rows = s.execute(select(Judgment.response_id, Judgment.repeat)).all()
            responses = s.scalars(select(Response.id)).all()
        assert sorted(rows) == sorted((r, k) for r in responses for k in (0, 1))
    finally:
        ctx.close()


def test_a_judge_that_asks_for_siblings_gets_the_other_samples(round_store, siblings_judge):
    store = round_store(judge={"name": "siblings_judge:CountsSiblings"})
    ctx = _generated(store)
    try:
        judge_round(ctx, store.round_id)
        with store.sessions() as s:
            scores = s.scalars(select(Judgment.score)).all()
        assert scores == [1.0] * 16  # K = 2: each sample has one sibling
    finally:
        ctx.close()


def test_the_meta_evaluation_is_stored_once_per_round(round_store):
    store = round_store(judge={"name": "verifier", "meta_eval_prompts": 4})
    ctx = _generated(store)
    try:
        judge_round(ctx, store.round_id)
        store_judge_eval(ctx, store.round_id)
        store_judge_eval(ctx, store.round_id)  # a re-run adds nothing
        with store.sessions() as s:
            metrics = s.execute(
                select(Metric.name, Metric.value).where(Metric.stage == "judge_eval")
            ).all()
        # The verifier is not compared with itself; a pointwise judge makes no comparisons.
        assert metrics == [("failed_rate", 0.0)]
    finally:
        ctx.close()
