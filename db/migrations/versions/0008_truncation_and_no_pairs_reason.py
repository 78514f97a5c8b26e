"""round_summaries.truncated_responses, rounds.no_pairs_reason

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:00:00

- round_summaries.truncated_responses: how many of the round's responses stopped at
  max_new_tokens (finish_reason "length"); existing summaries are filled from their responses.
- rounds.no_pairs_reason: why the pair builder made no pair in a round (e.g. "0 pairs: every
  win-rate gap below dno_margin 0.25 …"); null when it made some, and for earlier rounds.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("round_summaries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("truncated_responses", sa.Integer(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE round_summaries SET truncated_responses = (SELECT count(*) FROM responses "
        "WHERE responses.round_id = round_summaries.round_id "
        "AND responses.finish_reason = 'length')"
    )
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("no_pairs_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds", schema=None) as batch_op:
        batch_op.drop_column("no_pairs_reason")
    with op.batch_alter_table("round_summaries", schema=None) as batch_op:
        batch_op.drop_column("truncated_responses")
