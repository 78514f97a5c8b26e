"""SQLAlchemy 2.0 typed models of the preference store.

Every write is idempotent through a unique key: (run, name) for runs, (run, index) for rounds,
(round, index) for prompts, (round, prompt, sample_index) for responses, (response, judge,
repeat) for judgments, (round, chosen, rejected) for pairs, (response, checkpoint) for scored
log-probs. A pair is traceable to its two responses, their judgments and, through
`responses.checkpoint_id`, the checkpoint that generated them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[int]: JSON}


class RoundStatus:
    """Stages of a round, in order; `failed` stores the error on the row."""

    PENDING = "pending"
    GENERATING = "generating"
    JUDGING = "judging"
    PAIRING = "pairing"
    TRAINING = "training"
    EVALUATING = "evaluating"
    DONE = "done"
    FAILED = "failed"

    ORDER = (PENDING, GENERATING, JUDGING, PAIRING, TRAINING, EVALUATING, DONE)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(doc="The resolved config the run started with.")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)

    rounds: Mapped[list[Round]] = relationship(back_populates="run", order_by="Round.index")


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "round_index", name="uq_checkpoints_run_round"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    round_index: Mapped[int] = mapped_column(doc="-1: the initial (SFT) policy; t: after round t.")
    path: Mapped[str] = mapped_column(Text)
    heldout_accuracy: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "index", name="uq_rounds_run_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int]
    status: Mapped[str] = mapped_column(String(20), default=RoundStatus.PENDING, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    policy_checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    output_checkpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("checkpoints.id"), index=True
    )
    heldout_accuracy: Mapped[float | None] = mapped_column(Float)
    wall_time_s: Mapped[float] = mapped_column(Float, default=0.0, doc="Summed over attempts.")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    run: Mapped[Run] = relationship(back_populates="rounds")
    policy_checkpoint: Mapped[Checkpoint] = relationship(foreign_keys=[policy_checkpoint_id])
    output_checkpoint: Mapped[Checkpoint | None] = relationship(foreign_keys=[output_checkpoint_id])


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("round_id", "index", name="uq_prompts_round_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    index: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text, doc="Reference answer, when the task has one.")


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (
        UniqueConstraint(
            "round_id", "prompt_id", "sample_index", name="uq_responses_round_prompt_sample"
        ),
        Index("ix_responses_round_id_num_tokens", "round_id", "num_tokens"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    sample_index: Mapped[int]
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    token_ids: Mapped[list[int]] = mapped_column(doc="Response tokens as sampled, EOS included.")
    num_tokens: Mapped[int]
    logprob: Mapped[float] = mapped_column(Float, doc="Summed log-prob under the generator.")
    finish_reason: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Judgment(Base):
    __tablename__ = "judgments"
    __table_args__ = (
        UniqueConstraint("response_id", "judge", "repeat", name="uq_judgments_response_judge"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[int] = mapped_column(
        ForeignKey("responses.id", ondelete="CASCADE"), index=True
    )
    judge: Mapped[str] = mapped_column(String(100), index=True)
    repeat: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(20), index=True, doc="ok | failed")
    score: Mapped[float | None] = mapped_column(Float)
    critique: Mapped[str | None] = mapped_column(Text)
    trace: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    latency_s: Mapped[float | None] = mapped_column(Float)
    tokens: Mapped[int | None]
    cost: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Pair(Base):
    __tablename__ = "pairs"
    __table_args__ = (
        UniqueConstraint("round_id", "chosen_id", "rejected_id", name="uq_pairs_round_pair"),
        Index("ix_pairs_round_id_id", "round_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    chosen_id: Mapped[int] = mapped_column(
        ForeignKey("responses.id", ondelete="CASCADE"), index=True
    )
    rejected_id: Mapped[int] = mapped_column(
        ForeignKey("responses.id", ondelete="CASCADE"), index=True
    )
    chosen_score: Mapped[float] = mapped_column(Float)
    rejected_score: Mapped[float] = mapped_column(Float)
    margin: Mapped[float] = mapped_column(Float, index=True)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    builder: Mapped[str] = mapped_column(String(50))
    # SPPO's win-probability targets P̂ of each response (null for other builders).
    chosen_target: Mapped[float | None] = mapped_column(Float, nullable=True)
    rejected_target: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ResponseLogprob(Base):
    """A response's summed log-prob under a checkpoint (reference log-probs, precomputed)."""

    __tablename__ = "response_logprobs"
    __table_args__ = (
        UniqueConstraint("response_id", "checkpoint_id", name="uq_response_logprobs"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[int] = mapped_column(
        ForeignKey("responses.id", ondelete="CASCADE"), index=True
    )
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    logprob: Mapped[float] = mapped_column(Float)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("run_id", "round_index", "stage", "step", "name", name="uq_metrics"),
        Index("ix_metrics_run_round_stage", "run_id", "round_index", "stage"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    round_index: Mapped[int] = mapped_column(doc="-1 for run-level metrics (e.g. SFT).")
    stage: Mapped[str] = mapped_column(String(20))
    step: Mapped[int]
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
