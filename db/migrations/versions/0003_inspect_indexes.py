"""indexes for inspecting the store (db CLI, exports, dashboard)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 11:30:00

- pairs (round_id, id): keyset pages of one round's pairs (`WHERE round_id = ? AND id > ?
  ORDER BY id`) read the index in order on PostgreSQL too (SQLite's round_id index already
  ends in the rowid).
- responses (round_id, num_tokens): a round's response count and mean length, index-only.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pairs", schema=None) as batch_op:
        batch_op.create_index("ix_pairs_round_id_id", ["round_id", "id"], unique=False)
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.create_index(
            "ix_responses_round_id_num_tokens", ["round_id", "num_tokens"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.drop_index("ix_responses_round_id_num_tokens")
    with op.batch_alter_table("pairs", schema=None) as batch_op:
        batch_op.drop_index("ix_pairs_round_id_id")
