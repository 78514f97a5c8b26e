"""db.migrate on SQLite and PostgreSQL: the schema the migrations make is the models'."""

from __future__ import annotations

from sqlalchemy import inspect

from db.migrate import check_current, current_revision, head_revision, upgrade

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


def test_upgrade_creates_schema_and_is_idempotent(engine):
    assert TABLES <= set(inspect(engine).get_table_names())
    upgrade(engine)  # a second upgrade is a no-op
    assert current_revision(engine) == head_revision()
    check_current(engine, "the store")  # does not raise


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
