"""prompts.messages: a prompt may be a conversation (chat messages)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 09:00:00

A conversation prompt stores its turns as a JSON list of {"role", "content"} objects; `text`
keeps its last user turn. Null for a plain string prompt, so existing rows need no backfill.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prompts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("messages", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prompts", schema=None) as batch_op:
        batch_op.drop_column("messages")
