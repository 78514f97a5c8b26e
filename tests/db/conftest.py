"""A migrated store holding one small run, on SQLite and PostgreSQL (`engine`, tests/conftest.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.engine import session_factory, transaction
from db.models import Checkpoint, Prompt, Response, Round, Run


@pytest.fixture
def small_store(engine: Engine) -> tuple[sessionmaker[Session], dict[str, int]]:
    """Sessions on `engine` and the ids of run `r`: one round, two prompts and three responses
    to the first (stored with `insert_ignore_counted`, which counts them)."""
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        run = Run(name="r", config={"a": 1})
        s.add(run)
        s.flush()
        ckpt = Checkpoint(run_id=run.id, round_index=-1, path="/ckpt")
        s.add(ckpt)
        s.flush()
        rnd = Round(run_id=run.id, index=0, policy_checkpoint_id=ckpt.id)
        s.add(rnd)
        s.flush()
        p0 = Prompt(round_id=rnd.id, index=0, text="Q:1+1=", answer="2")
        p1 = Prompt(round_id=rnd.id, index=1, text="Q:2+2=", answer="4")
        s.add_all([p0, p1])
        s.flush()
        ids = {"run": run.id, "ckpt": ckpt.id, "round": rnd.id, "p0": p0.id, "p1": p1.id}
    rows = [
        dict(
            round_id=ids["round"],
            prompt_id=ids["p0"],
            sample_index=k,
            checkpoint_id=ids["ckpt"],
            text=f"A:{k}",
            token_ids=[5, 6, k],
            num_tokens=3,
            logprob=-1.0 * k,
            finish_reason="stop",
        )
        for k in range(3)
    ]
    with transaction(sessions) as s:
        assert queries.insert_ignore_counted(s, Response, rows) == 3
    return sessions, ids
