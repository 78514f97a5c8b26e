"""Alembic migrations, run programmatically: `selfplay db upgrade` and `selfplay run` call this."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    """An Alembic config bound to an engine (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (idempotent)."""
    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@functools.cache
def head_revision() -> str:
    """The latest revision this version of selfplay's migrations know (read once a process)."""
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head()


def check_current(engine: Engine, url: str) -> None:
    """Raise RuntimeError, naming the fix, when the store's schema is not this selfplay's."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise RuntimeError(
            f"the store {url} is at schema revision {current}, this selfplay needs {head}: "
            f"run `selfplay db upgrade --db {url}` (or, for a store made by a newer selfplay, "
            "upgrade selfplay)"
        )
