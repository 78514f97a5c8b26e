"""db.engine: SQLite's pragmas, sessions that stay readable, transactions that roll back."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from db.engine import make_engine, session_factory, transaction
from db.models import Run


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'nested' / 'x.db'}")
    with eng.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    eng.dispose()


def test_a_transaction_commits_on_success_and_rolls_back_on_error(engine):
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        run = Run(name="kept", config={})
        s.add(run)
    assert run.name == "kept"  # readable after the commit (expire_on_commit=False)
    with pytest.raises(RuntimeError), transaction(sessions) as s:
        s.add(Run(name="dropped", config={}))
        s.flush()
        raise RuntimeError("boom")
    with sessions() as s:
        assert s.scalars(select(Run.name)).all() == ["kept"]
        assert s.scalar(select(func.count()).select_from(Run)) == 1
