"""pairs: SPPO win-probability targets

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 11:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pairs") as batch:
        batch.add_column(sa.Column("chosen_target", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rejected_target", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pairs") as batch:
        batch.drop_column("rejected_target")
        batch.drop_column("chosen_target")
