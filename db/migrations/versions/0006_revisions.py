"""responses.revises_id: critique → revise links a revision to the response it rewrites

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 14:30:00

Revisions are stored as responses of their round (sample indices after the policy's and the
reference's samples); `revises_id` names the original. Null for every ordinary sample, so
existing rows need no backfill.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revises_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_responses_revises_id", ["revises_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_responses_revises_id_responses",
            "responses",
            ["revises_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.drop_constraint("fk_responses_revises_id_responses", type_="foreignkey")
        batch_op.drop_index("ix_responses_revises_id")
        batch_op.drop_column("revises_id")
