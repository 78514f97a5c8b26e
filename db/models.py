"""SQLAlchemy 2.0 typed models of the preference store.

Every write is idempotent through a unique key: (run, name) for runs, (run, index) for rounds,
(round, index) for prompts, (round, prompt, sample_index) for responses (a revision's sample
index follows from the one it revises, so it is stored once), (response, judge, repeat) for
judgments, (round, chosen, rejected) for pairs, (response, checkpoint) for scored
log-probs, round for a round's stored summary. A pair is traceable to its two responses,
their judgments and, through `responses.checkpoint_id`, the checkpoint that generated them.
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
    REVISING = "revising"
    PAIRING = "pairing"
    TRAINING = "training"
    EVALUATING = "evaluating"
    DONE = "done"
    FAILED = "failed"

    ORDER = (PENDING, GENERATING, JUDGING, REVISING, PAIRING, TRAINING, EVALUATING, DONE)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(doc="The resolved config the run started with.")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)

    rounds: Mapped[list[Round]] = relationship(back_populates="run", order_by="Round.index")


# The path of the checkpoint row (round index -1) of a run made by `selfplay judge`: its
# responses came from a file, not from a model.
EXTERNAL_CHECKPOINT_PREFIX = "external:"
# The path of the checkpoint row (round index REFERENCE_ROUND_INDEX) that stands for the
# responses of an `evaluation.reference` file: the win-rate baseline, not a model.
REFERENCE_CHECKPOINT_PREFIX = "reference:"
REFERENCE_ROUND_INDEX = -2


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "round_index", name="uq_checkpoints_run_round"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    round_index: Mapped[int] = mapped_column(
        doc="-1: the initial (SFT) policy, or `external:<file>` responses; -2: the "
        "`reference:<file>` responses of evaluation.reference; t: after round t."
    )
    path: Mapped[str] = mapped_column(Text)
    heldout_accuracy: Mapped[float | None] = mapped_column(Float)
    heldout_score: Mapped[float | None] = mapped_column(
        Float,
        doc="The checkpoint's value of the run's evaluation.metric (accuracy, win rate, its "
        "length-controlled form or judge score): what the best checkpoint and the guards use.",
    )
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
    no_pairs_reason: Mapped[str | None] = mapped_column(
        Text, doc="Why the pair builder made no pair in this round; null when it made some."
    )
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
    messages: Mapped[list[dict[str, str]] | None] = mapped_column(
        JSON(none_as_null=True),
        doc="A conversation prompt's turns ({role, content}); SQL NULL for a plain string.",
    )


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
    revises_id: Mapped[int | None] = mapped_column(
        ForeignKey("responses.id", ondelete="CASCADE"),
        index=True,
        doc="Critique → revise: the response this one rewrites; null for ordinary samples.",
    )
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


class RoundSummaryRecord(Base):
    """A done round's aggregates (`db.summaries.RoundSummary`), stored when the round finishes so
    that reading them costs one row instead of a pass over the round's pairs, responses and
    judgments. Status, held-out accuracy and wall time stay on the round's own row."""

    __tablename__ = "round_summaries"
    __table_args__ = (UniqueConstraint("round_id", name="uq_round_summaries_round"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    prompts: Mapped[int]
    responses: Mapped[int]
    mean_response_tokens: Mapped[float | None] = mapped_column(Float)
    judgments: Mapped[dict[str, Any]] = mapped_column(doc="Judgment count by status.")
    mean_score: Mapped[float | None] = mapped_column(Float)
    pairs: Mapped[int]
    mean_margin: Mapped[float | None] = mapped_column(Float)
    mean_chosen_score: Mapped[float | None] = mapped_column(Float)
    mean_rejected_score: Mapped[float | None] = mapped_column(Float)
    mean_chosen_tokens: Mapped[float | None] = mapped_column(Float)
    mean_rejected_tokens: Mapped[float | None] = mapped_column(Float)
    judge_agreement: Mapped[float | None] = mapped_column(Float)
    reward_margin: Mapped[float | None] = mapped_column(Float)
    truncated_responses: Mapped[int] = mapped_column(
        default=0, server_default="0", doc="Responses cut at max_new_tokens."
    )
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


class JudgeCacheEntry(Base):
    """A stored answer of an API judge, keyed by a hash of (model, messages, parameters).

    Shared by every run on the store: an identical request is answered from here at no cost.
    The API key is never part of the key or the row.
    """

    __tablename__ = "judge_cache"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True, doc="sha256 hex of the request.")
    model: Mapped[str] = mapped_column(String(200))
    response: Mapped[str] = mapped_column(Text, doc="The judge model's answer text.")
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0, doc="What the original call cost.")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class EvalResponse(Base):
    """One response to a held-out prompt, sampled from a checkpoint for evaluation (win rate,
    judge score), or read from the evaluation.reference file (its checkpoint row stands for
    the file). `heldout_index` is the prompt's position in the task's held-out set."""

    __tablename__ = "eval_responses"
    __table_args__ = (
        UniqueConstraint("checkpoint_id", "heldout_index", name="uq_eval_responses_ckpt_prompt"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[int] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True
    )
    heldout_index: Mapped[int]
    prompt: Mapped[str] = mapped_column(Text, doc="The held-out prompt's text (last user turn).")
    text: Mapped[str] = mapped_column(Text)
    num_tokens: Mapped[int | None] = mapped_column(doc="Null for a reference file's response.")
    finish_reason: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _EvalJudgment:
    """The columns an evaluation verdict shares with `judgments`: who judged, its status and
    trace, and what it cost."""

    judge: Mapped[str] = mapped_column(String(100))
    repeat: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(20), doc="ok | failed")
    critique: Mapped[str | None] = mapped_column(Text)
    trace: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    latency_s: Mapped[float | None] = mapped_column(Float)
    tokens: Mapped[int | None]
    cost: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class EvalScore(_EvalJudgment, Base):
    """A judge's pointwise verdict on an evaluation response (judge score; the win rate of a
    judge without `compare`)."""

    __tablename__ = "eval_scores"
    __table_args__ = (
        UniqueConstraint("response_id", "judge", "repeat", name="uq_eval_scores_response_judge"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[int] = mapped_column(
        ForeignKey("eval_responses.id", ondelete="CASCADE"), index=True
    )
    score: Mapped[float | None] = mapped_column(Float)


class EvalComparison(_EvalJudgment, Base):
    """A pairwise judge's comparison of an evaluation response with the baseline's response to
    the same held-out prompt, in both orders: `outcome` = P(response ≻ baseline)."""

    __tablename__ = "eval_comparisons"
    __table_args__ = (
        UniqueConstraint(
            "response_id", "baseline_id", "judge", "repeat", name="uq_eval_comparisons"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[int] = mapped_column(
        ForeignKey("eval_responses.id", ondelete="CASCADE"), index=True
    )
    baseline_id: Mapped[int] = mapped_column(
        ForeignKey("eval_responses.id", ondelete="CASCADE"), index=True
    )
    outcome: Mapped[float | None] = mapped_column(Float)
