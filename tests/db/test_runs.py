"""db.runs on SQLite and PostgreSQL: the list of runs and selection by name."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from db.engine import make_engine, session_factory, transaction
from db.models import Round, Run
from db.runs import InspectError, NotFound, RunInfo, list_runs, select_runs


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
