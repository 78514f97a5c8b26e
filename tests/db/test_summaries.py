"""db.summaries on SQLite and PostgreSQL: a round's figures, stored when it is done, computed
from its rows otherwise, the same either way."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import delete, select, update

from db.engine import make_engine, session_factory, transaction
from db.models import Metric, Pair, Response, Round, RoundSummaryRecord
from db.runs import NotFound
from db.summaries import (
    compute_round_summary,
    count_rows,
    round_metrics,
    round_summaries,
    round_summary,
    stage_metrics,
    unsummarized_rounds,
    write_round_summary,
)


@pytest.fixture
def demo(seeded_url):
    """Sessions on the `demo` store (tests/conftest.py) and its run id."""
    engine = make_engine(seeded_url)
    sessions = session_factory(engine)
    with sessions() as s:
        run_id = s.scalar(select(Round.run_id).limit(1))
    yield sessions, run_id
    engine.dispose()


def test_a_round_in_progress_is_counted_from_its_rows(small_store):
    sessions, ids = small_store
    with transaction(sessions) as s:
        r = list(s.scalars(select(Response).order_by(Response.id)))
        s.add(
            Pair(
                round_id=ids["round"],
                prompt_id=ids["p0"],
                chosen_id=r[0].id,
                rejected_id=r[2].id,
                chosen_score=1.0,
                rejected_score=0.0,
                margin=1.0,
                builder="max_min",
            )
        )
    with sessions() as s:
        (summary,) = round_summaries(s, ids["run"])
        assert (summary.pairs, summary.responses, summary.status) == (1, 3, "pending")
        assert (summary.run, summary.index, summary.summarized) == ("r", 0, False)
        assert round_summaries(s, ids["run"], index=0) == [summary]
        assert round_summaries(s, ids["run"], index=1) == []


def test_the_figures_of_a_round(demo):
    sessions, run_id = demo
    with sessions() as s:
        st = round_summary(s, run_id, 0)
    assert (st.run, st.status, st.error, st.summarized) == ("demo", "done", None, False)
    assert (st.prompts, st.responses, st.pairs, st.judgments) == (3, 12, 6, {"ok": 24})
    assert st.mean_response_tokens == 2.5 and st.mean_score == pytest.approx(
        (2 + 0.9 + 2 / 3 + 1) / 8
    )  # 8 judgments a prompt
    assert st.mean_margin == pytest.approx(2 / 3)
    assert (st.mean_chosen_score, st.mean_rejected_score) == (
        pytest.approx(5 / 6),
        pytest.approx(1 / 6),
    )
    assert (st.mean_chosen_tokens, st.mean_rejected_tokens) == (3.5, 1.5)
    # `llm` disagrees with `verifier` on sample 1 of every prompt: 9 of 12 responses agree.
    assert st.judge_agreement == pytest.approx(0.75)
    assert st.reward_margin == pytest.approx(0.2)  # mean of the train steps' 0.1, 0.2, 0.3
    assert (st.heldout_accuracy, st.wall_time_s) == (0.5, 1.5)
    assert st.verifier_agreement is None and st.judge_failed_rate is None


def test_a_stored_summary_equals_the_computed_figures_and_is_rewritten_in_place(demo):
    sessions, run_id = demo
    with sessions() as s:
        assert [r.index for r in unsummarized_rounds(s, run_id)] == [0, 1]
        live = round_summaries(s, run_id)
    with transaction(sessions) as s:
        for rnd in unsummarized_rounds(s, run_id):
            write_round_summary(s, rnd)
    with transaction(sessions) as s:
        write_round_summary(s, s.get(Round, s.scalar(select(Round.id).where(Round.index == 1))))
    with sessions() as s:
        assert unsummarized_rounds(s, run_id) == []
        assert len(s.scalars(select(RoundSummaryRecord)).all()) == 2
        stored = round_summaries(s, run_id)
        assert stored == [dataclasses.replace(st, summarized=True) for st in live]
        rnd = s.scalar(select(Round).where(Round.index == 0))
        assert compute_round_summary(s, rnd) == live[0]


def test_a_done_round_reads_its_summary_and_any_other_round_its_rows(demo):
    sessions, run_id = demo
    with transaction(sessions) as s:
        for rnd in unsummarized_rounds(s, run_id):
            write_round_summary(s, rnd)
        s.execute(delete(Pair).where(Pair.margin < 0.5))  # 3 of each round's 6 pairs
    with sessions() as s:
        assert [st.pairs for st in round_summaries(s, run_id)] == [6, 6]
    with transaction(sessions) as s:
        s.execute(update(Round).where(Round.index == 1).values(status="training"))
    with sessions() as s:
        assert [(st.pairs, st.summarized) for st in round_summaries(s, run_id)] == [
            (6, True),
            (3, False),
        ]


def test_the_judge_meta_evaluation_and_the_rounds_error_come_with_its_figures(demo):
    sessions, run_id = demo
    evals = {"verifier_agreement": 0.75, "failed_rate": 0.125, "agreement_pairs": 12.0}
    with transaction(sessions) as s:
        for name, value in evals.items():
            s.add(
                Metric(
                    run_id=run_id, round_index=1, stage="judge_eval", step=0, name=name, value=value
                )
            )
        s.execute(update(Round).where(Round.index == 0).values(status="failed", error="judging: x"))
    with sessions() as s:
        assert stage_metrics(s, run_id, "judge_eval") == {1: evals}
        assert stage_metrics(s, run_id, "judge_eval", round_index=0) == {}
        st0, st1 = round_summaries(s, run_id)
        assert (st0.status, st0.error, st0.verifier_agreement) == ("failed", "judging: x", None)
        assert (st1.verifier_agreement, st1.judge_failed_rate) == (0.75, 0.125)
        assert st1.position_bias_rate is None
        assert round_summary(s, run_id, 1) == st1


def test_an_unknown_round_is_not_found(demo):
    sessions, run_id = demo
    with sessions() as s, pytest.raises(NotFound, match=f"run {run_id} has no round 7"):
        round_summary(s, run_id, 7)


def test_round_metrics_and_row_counts(demo):
    sessions, run_id = demo
    with sessions() as s:
        train = round_metrics(s, run_id, 1, "train")
        assert train == {
            "loss": [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))],
            "reward_margin": [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))],
        }
        assert round_metrics(s, run_id, 1, "eval") == {}
        assert count_rows(s, run_id) == {
            "rounds": 2,
            "checkpoints": 3,
            "prompts": 6,
            "responses": 24,
            "judgments": 48,
            "pairs": 12,
            "response_logprobs": 0,
        }
