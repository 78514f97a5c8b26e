"""round_summaries: a done round's stored aggregates; a trigram index for the prompt search

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 14:10:00

- round_summaries: one row per done round (db.models.RoundSummaryRecord), written by the driver
  when the round finishes. Rounds that finished before this revision have none: they are computed
  live until `selfplay db summarize` stores them.
- prompts.text, PostgreSQL only: a pg_trgm GIN index, so that the pair browser's
  `LIKE '%term%'` search reads the index instead of every prompt. It needs the pg_trgm extension
  (created in schema public when missing and allowed); without it the index is skipped with a
  warning and search scans the prompts as before.
- prompts_fts, SQLite only: an FTS5 table with the trigram tokenizer (SQLite ≥ 3.34) over
  prompts.text (external content: it stores the index, not the text), kept in step by triggers
  and filled here; `db.pairs` narrows a search of ≥ 3 characters with it, then applies the
  same LIKE. Without FTS5 or the trigram tokenizer it is skipped with a warning. Caveat for later
  migrations: a batch (copy-and-move) alteration of `prompts` on SQLite drops its triggers;
  such a migration must recreate them (`_create_sqlite_fts` below).
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)
TRGM_INDEX = "ix_prompts_text_trgm"
FTS_TABLE = "prompts_fts"


def upgrade() -> None:
    op.create_table(
        "round_summaries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("prompts", sa.Integer(), nullable=False),
        sa.Column("responses", sa.Integer(), nullable=False),
        sa.Column("mean_response_tokens", sa.Float(), nullable=True),
        sa.Column("judgments", sa.JSON(), nullable=False),
        sa.Column("mean_score", sa.Float(), nullable=True),
        sa.Column("pairs", sa.Integer(), nullable=False),
        sa.Column("mean_margin", sa.Float(), nullable=True),
        sa.Column("mean_chosen_score", sa.Float(), nullable=True),
        sa.Column("mean_rejected_score", sa.Float(), nullable=True),
        sa.Column("mean_chosen_tokens", sa.Float(), nullable=True),
        sa.Column("mean_rejected_tokens", sa.Float(), nullable=True),
        sa.Column("judge_agreement", sa.Float(), nullable=True),
        sa.Column("reward_margin", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("round_id", name="uq_round_summaries_round"),
    )
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        _create_trgm_index()
    elif dialect == "sqlite":
        _create_sqlite_fts()


def _create_trgm_index() -> None:
    conn = op.get_bind()
    schema = _trgm_schema(conn)
    if schema is None:
        try:
            # In a savepoint: a refusal (no privilege, extension not installed) must not abort
            # the migration's transaction.
            with conn.begin_nested():
                conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public"))
        except sa.exc.DBAPIError as e:
            log.warning(
                "pg_trgm unavailable (%s): no trigram index on prompts.text, "
                "so pair search scans the prompts",
                str(e.orig).strip().splitlines()[0],
            )
            return
        schema = _trgm_schema(conn)
    # The operator class is qualified: the extension lives in one schema of the database,
    # which need not be on this store's search_path.
    op.execute(f'CREATE INDEX {TRGM_INDEX} ON prompts USING gin (text "{schema}".gin_trgm_ops)')


SQLITE_FTS = [
    f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(text, content='prompts', content_rowid='id', "
    "tokenize='trigram')",
    f"CREATE TRIGGER {FTS_TABLE}_ai AFTER INSERT ON prompts BEGIN "
    f"INSERT INTO {FTS_TABLE}(rowid, text) VALUES (new.id, new.text); END",
    f"CREATE TRIGGER {FTS_TABLE}_ad AFTER DELETE ON prompts BEGIN "
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text) VALUES ('delete', old.id, old.text); END",
    f"CREATE TRIGGER {FTS_TABLE}_au AFTER UPDATE OF text ON prompts BEGIN "
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text) VALUES ('delete', old.id, old.text); "
    f"INSERT INTO {FTS_TABLE}(rowid, text) VALUES (new.id, new.text); END",
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')",
]


def _create_sqlite_fts() -> None:
    conn = op.get_bind()
    try:
        with conn.begin_nested():
            for statement in SQLITE_FTS:
                conn.execute(sa.text(statement))
    except sa.exc.OperationalError as e:
        log.warning(
            "SQLite without FTS5's trigram tokenizer (%s): no %s, so pair search scans the prompts",
            e.orig,
            FTS_TABLE,
        )


def _trgm_schema(conn: sa.Connection) -> str | None:
    return conn.scalar(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'pg_trgm'"
        )
    )


def downgrade() -> None:
    # The pg_trgm extension stays: other schemas of the database may use it.
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {TRGM_INDEX}")
    elif dialect == "sqlite":
        for trigger in ("ai", "ad", "au"):
            op.execute(f"DROP TRIGGER IF EXISTS {FTS_TABLE}_{trigger}")
        op.execute(f"DROP TABLE IF EXISTS {FTS_TABLE}")
    op.drop_table("round_summaries")
