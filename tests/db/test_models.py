"""db.models on SQLite and PostgreSQL: unique keys, foreign keys, and an index on every FK."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from db.engine import transaction
from db.models import Base, Checkpoint, Prompt, Response


def test_every_foreign_key_is_indexed(engine):
    insp = inspect(engine)
    assert Base.metadata.tables  # every table of the models
    for table in Base.metadata.tables:
        indexed = {tuple(ix["column_names"]) for ix in insp.get_indexes(table)}
        indexed |= {tuple(u["column_names"][:1]) for u in insp.get_unique_constraints(table)}
        for fk in insp.get_foreign_keys(table):
            cols = tuple(fk["constrained_columns"])
            assert any(ix[: len(cols)] == cols for ix in indexed), f"{table}.{cols} not indexed"


@pytest.mark.parametrize(
    "model,dup",
    [
        (Prompt, lambda ids: dict(round_id=ids["round"], index=0, text="other")),
        (Checkpoint, lambda ids: dict(run_id=ids["run"], round_index=-1, path="/other")),
        (
            Response,
            lambda ids: dict(
                round_id=ids["round"],
                prompt_id=ids["p0"],
                sample_index=0,
                checkpoint_id=ids["ckpt"],
                text="x",
                token_ids=[],
                num_tokens=0,
                logprob=0.0,
                finish_reason="length",
            ),
        ),
    ],
)
def test_unique_keys_reject_duplicates(small_store, model, dup):
    sessions, ids = small_store
    with pytest.raises(IntegrityError), transaction(sessions) as s:
        s.add(model(**dup(ids)))


def test_foreign_keys_are_enforced(small_store):
    sessions, _ = small_store
    with pytest.raises(IntegrityError), transaction(sessions) as s:
        s.add(Prompt(round_id=999_999, index=0, text="orphan"))
