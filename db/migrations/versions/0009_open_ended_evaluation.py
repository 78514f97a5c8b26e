"""checkpoints.heldout_score; eval_responses, eval_scores, eval_comparisons: open-ended evaluation

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 14:00:00

- checkpoints.heldout_score: the checkpoint's value of the run's evaluation.metric, which the
  best checkpoint, guards.patience and guards.keep_last read; existing rows (evaluated by
  accuracy, the only metric before) are filled from heldout_accuracy.
- eval_responses: responses to the held-out prompts sampled from a checkpoint for evaluation,
  or read from an evaluation.reference file (a checkpoint row at round index -2 stands for it).
- eval_scores: a judge's pointwise verdicts on them; eval_comparisons: a pairwise judge's
  comparisons of a checkpoint's response with the baseline's, P(response ≻ baseline).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _judged(name: str, *columns: sa.Column, unique: tuple[str, ...]) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Integer(), nullable=False),
        *columns,
        sa.Column("judge", sa.String(length=100), nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("critique", sa.Text(), nullable=True),
        sa.Column("trace", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=True),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(*unique[1:], name=unique[0]),
    )


def upgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heldout_score", sa.Float(), nullable=True))
    op.execute("UPDATE checkpoints SET heldout_score = heldout_accuracy")
    op.create_table(
        "eval_responses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=False),
        sa.Column("heldout_index", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("num_tokens", sa.Integer(), nullable=True),
        sa.Column("finish_reason", sa.String(length=20), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["checkpoint_id"], ["checkpoints.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("checkpoint_id", "heldout_index", name="uq_eval_responses_ckpt_prompt"),
    )
    op.create_index("ix_eval_responses_run_id", "eval_responses", ["run_id"])
    op.create_index("ix_eval_responses_checkpoint_id", "eval_responses", ["checkpoint_id"])
    response = sa.Column("response_id", sa.Integer(), nullable=False)
    _judged(
        "eval_scores",
        response,
        sa.Column("score", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["response_id"], ["eval_responses.id"], ondelete="CASCADE"),
        unique=("uq_eval_scores_response_judge", "response_id", "judge", "repeat"),
    )
    op.create_index("ix_eval_scores_response_id", "eval_scores", ["response_id"])
    _judged(
        "eval_comparisons",
        sa.Column("response_id", sa.Integer(), nullable=False),
        sa.Column("baseline_id", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["response_id"], ["eval_responses.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["baseline_id"], ["eval_responses.id"], ondelete="CASCADE"),
        unique=("uq_eval_comparisons", "response_id", "baseline_id", "judge", "repeat"),
    )
    op.create_index("ix_eval_comparisons_response_id", "eval_comparisons", ["response_id"])
    op.create_index("ix_eval_comparisons_baseline_id", "eval_comparisons", ["baseline_id"])


def downgrade() -> None:
    op.drop_table("eval_comparisons")
    op.drop_table("eval_scores")
    op.drop_table("eval_responses")
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_column("heldout_score")
