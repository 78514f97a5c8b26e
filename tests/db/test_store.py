"""The store on SQLite and PostgreSQL: migrations, unique keys, idempotent writes, queries."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from db import queries
from db.engine import session_factory, transaction
from db.migrate import current_revision, head_revision, upgrade
from db.models import Checkpoint, Judgment, Pair, Prompt, Response, ResponseLogprob, Round, Run

TABLES = {
    "runs",
    "rounds",
    "checkpoints",
    "prompts",
    "responses",
    "judgments",
    "pairs",
    "response_logprobs",
    "metrics",
    "judge_cache",
    "round_summaries",
}


def _seed(sessions) -> dict[str, int]:
    """A run with one round, two prompts and three responses to the first prompt."""
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
        assert queries.insert_ignore(s, Response, rows) == 3
    return ids


def test_upgrade_creates_schema_and_is_idempotent(engine):
    assert TABLES <= set(inspect(engine).get_table_names())
    upgrade(engine)  # a second upgrade is a no-op
    assert current_revision(engine) == head_revision()


def test_migrations_match_the_models(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from db.models import Base

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    # The prompt search's trigram index (PostgreSQL) and FTS5 tables (SQLite) are optional
    # accelerators that the models do not declare.
    diff = [
        d
        for d in diff
        if not (d[0] == "remove_index" and d[1].name == "ix_prompts_text_trgm")
        and not (d[0] == "remove_table" and d[1].name.startswith("prompts_fts"))
    ]
    assert diff == []


def test_prompt_search_has_a_trigram_index(engine):
    # The test database allows CREATE EXTENSION pg_trgm; this SQLite has FTS5's trigram tokenizer.
    if engine.dialect.name == "postgresql":
        indexes = {ix["name"] for ix in inspect(engine).get_indexes("prompts")}
        assert "ix_prompts_text_trgm" in indexes
    else:
        assert "prompts_fts" in inspect(engine).get_table_names()


def test_every_foreign_key_is_indexed(engine):
    insp = inspect(engine)
    for table in TABLES:
        indexed = {tuple(ix["column_names"]) for ix in insp.get_indexes(table)}
        indexed |= {tuple(u["column_names"][:1]) for u in insp.get_unique_constraints(table)}
        for fk in insp.get_foreign_keys(table):
            cols = tuple(fk["constrained_columns"])
            assert any(ix[: len(cols)] == cols for ix in indexed), f"{table}.{cols} not indexed"


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path):
    from db.engine import make_engine

    eng = make_engine(f"sqlite:///{tmp_path / 'nested' / 'x.db'}")
    with eng.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    eng.dispose()


def test_insert_ignore_makes_redelivery_a_noop(engine):
    sessions = session_factory(engine)
    ids = _seed(sessions)
    with transaction(sessions) as s:
        responses = list(s.scalars(select(Response)))
    rows = [
        dict(response_id=r.id, judge="verifier", repeat=0, status="ok", score=float(r.sample_index))
        for r in responses
    ]
    with transaction(sessions) as s:
        assert queries.insert_ignore(s, Judgment, rows) == 3
    with transaction(sessions) as s:
        assert queries.insert_ignore(s, Judgment, rows) == 0
        assert queries.insert_ignore(s, Judgment, []) == 0
    with transaction(sessions) as s:
        counts = queries.count_rows(s, ids["run"])
    assert counts["responses"] == 3 and counts["judgments"] == 3 and counts["prompts"] == 2


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
def test_unique_keys_reject_duplicates(engine, model, dup):
    sessions = session_factory(engine)
    ids = _seed(sessions)
    with pytest.raises(IntegrityError), transaction(sessions) as s:
        s.add(model(**dup(ids)))


def test_foreign_keys_are_enforced(engine):
    sessions = session_factory(engine)
    _seed(sessions)
    with pytest.raises(IntegrityError), transaction(sessions) as s:
        s.add(Prompt(round_id=999_999, index=0, text="orphan"))


def test_missing_work_queries(engine):
    sessions = session_factory(engine)
    ids = _seed(sessions)
    with sessions() as s:
        # p0 has 3 responses, p1 none: with K=3 only p1 is missing, with K=4 both.
        assert [p.id for p in queries.prompts_missing_responses(s, ids["round"], 3)] == [ids["p1"]]
        assert len(queries.prompts_missing_responses(s, ids["round"], 4)) == 2
        todo = queries.responses_missing_judgment(s, ids["round"], "verifier")
        assert len(todo) == 3 and all(p.id == ids["p0"] for _, p in todo)
    first, second = todo[0][0].id, todo[1][0].id
    with transaction(sessions) as s:
        queries.insert_ignore(
            s,
            Judgment,
            [
                dict(response_id=first, judge="verifier", repeat=0, status="ok", score=1.0),
                dict(response_id=second, judge="verifier", repeat=0, status="failed", error="x"),
            ],
        )
    with sessions() as s:
        remaining = queries.responses_missing_judgment(s, ids["round"], "verifier")
        assert [r.id for r, _ in remaining] == [todo[2][0].id]
        # Only successful judgments count as scores.
        scored = queries.scored_responses(s, ids["round"], "verifier")
        assert [(x.response_id, x.score) for x in scored] == [(first, 1.0)]


def test_training_pairs_and_logprobs(engine):
    sessions = session_factory(engine)
    ids = _seed(sessions)
    with sessions() as s:
        r = [r for r, _ in queries.responses_missing_judgment(s, ids["round"], "v")]
    with transaction(sessions) as s:
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
        queries.insert_ignore(
            s,
            ResponseLogprob,
            [dict(response_id=r[0].id, checkpoint_id=ids["ckpt"], logprob=-3.5)],
        )
    with sessions() as s:
        (tp,) = queries.training_pairs(s, ids["round"])
        assert tp.prompt == "Q:1+1=" and tp.chosen_token_ids == [5, 6, 0]
        assert tp.rejected_token_ids == [5, 6, 2]
        assert queries.logprobs_for(s, ids["ckpt"], [r[0].id, r[2].id]) == {r[0].id: -3.5}
        (summary,) = queries.round_summaries(s, ids["run"])
        assert (summary.pairs, summary.responses, summary.status) == (1, 3, "pending")
        assert queries.round_summaries(s, ids["run"], index=0) == [summary]
        assert queries.round_summaries(s, ids["run"], index=1) == []
