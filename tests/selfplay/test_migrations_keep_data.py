"""Migrating a filled store down and up again keeps every row (SQLite rebuilds tables)."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from db.engine import make_engine
from db.migrate import alembic_config, current_revision, head_revision, upgrade

TABLES = ("runs", "checkpoints", "rounds", "prompts", "responses", "judgments", "pairs", "metrics")


def test_down_and_up_keeps_judgments_and_pairs(seeded_url: str):
    engine = make_engine(seeded_url)

    def counts() -> dict[str, int]:
        with engine.connect() as conn:
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}

    before = counts()
    assert before["judgments"] == 48 and before["pairs"] == 12
    # 0006 rebuilds `responses` on SQLite; with foreign keys on, dropping the old table used to
    # cascade-delete every judgment and pair that referenced it.
    command.downgrade(alembic_config(engine), "0003")
    assert counts() == before
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert counts() == before
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:  # the pool's connections keep enforcing foreign keys
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
