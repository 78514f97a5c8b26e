"""db.runs on SQLite and PostgreSQL: the list of runs and selection by name."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from db.engine import make_engine, session_factory, transaction
from db.models import Checkpoint, Metric, Round, Run
from db.runs import (
    InspectError,
    NotFound,
    RunInfo,
    checkpoint_figures,
    evaluation_kind,
    list_runs,
    select_runs,
)
from tests.conftest import WIN_RATES, make_open_ended


def test_list_runs_counts_rounds_and_takes_the_latest_accuracy(seeded_url):
    engine = make_engine(seeded_url)
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        s.execute(update(Round).where(Round.index == 1).values(status="training"))
    with sessions() as s:
        (info,) = list_runs(s)
    engine.dispose()
    assert isinstance(info, RunInfo) and info.name == "demo"
    assert (info.rounds, info.rounds_done, info.last_heldout_accuracy) == (2, 1, 0.75)
    assert (info.last_heldout_score, info.evaluation) == (0.75, "accuracy")


@pytest.mark.parametrize(("kind", "score"), [("win_rate", 0.7), ("judge_score", 0.72)])
def test_list_runs_gives_the_latest_score_in_the_runs_metric(seeded_url, kind, score):
    make_open_ended(seeded_url, kind)
    engine = make_engine(seeded_url)
    with session_factory(engine)() as s:
        (info,) = list_runs(s)
    engine.dispose()
    assert (info.last_heldout_accuracy, info.last_heldout_score, info.evaluation) == (
        None,
        score,
        kind,
    )


def test_checkpoint_figures_hold_its_eval_metrics_and_the_initial_baselines_half(win_rate_url):
    engine = make_engine(win_rate_url)
    with session_factory(engine)() as s:
        ckpts = {c.round_index: c for c in s.query(Checkpoint)}
        initial, last = checkpoint_figures(s, ckpts[-1]), checkpoint_figures(s, ckpts[1])
    engine.dispose()
    assert initial == {"heldout_accuracy": None, "win_rate": 0.5, "win_rate_lc": 0.5}
    assert last == WIN_RATES[1] | {"heldout_accuracy": None}


def test_evaluation_kind_before_any_round_is_evaluated(engine):
    """Only the initial policy evaluated: a score without accuracy is the win-rate baseline's
    0.5; with an accuracy (or nothing yet) the run is shown by accuracy; failures alone are
    enough."""
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        for name, accuracy, score in (("wr", None, 0.5), ("acc", 0.25, 0.25), ("new", None, None)):
            run = Run(name=name, config={})
            s.add(run)
            s.flush()
            s.add(
                Checkpoint(
                    run_id=run.id,
                    round_index=-1,
                    path="/x",
                    heldout_accuracy=accuracy,
                    heldout_score=score,
                )
            )
        # Against an evaluation.reference file every comparison failed: only the failures.
        failed = Run(name="failed", config={})
        s.add(failed)
        s.flush()
        s.add(Checkpoint(run_id=failed.id, round_index=-1, path="/x"))
        s.add(
            Metric(
                run_id=failed.id,
                round_index=-1,
                stage="eval",
                step=0,
                name="win_rate_failed",
                value=3.0,
            )
        )
    with sessions() as s:
        kinds = {r.name: evaluation_kind(s, r.id) for r in select_runs(s)}
    assert kinds == {"wr": "win_rate", "acc": "accuracy", "new": "accuracy", "failed": "win_rate"}


def test_select_runs_by_name_or_all(engine):
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        s.add_all([Run(name="b", config={}), Run(name="a", config={})])
    with sessions() as s:
        assert [r.name for r in select_runs(s)] == ["b", "a"]  # id order
        assert [r.name for r in select_runs(s, "a")] == ["a"]
        with pytest.raises(NotFound, match="no run named 'nope'") as e:
            select_runs(s, "nope")
    assert isinstance(e.value, InspectError)
