"""The loop's queries: what the stages, the driver, labeling and the workers read and write.

Each takes a session and does not commit: the caller owns it. Writes are named as writes
(`insert_ignore`, `insert_ignore_counted`, `delete_metrics`); the rest only read. The read side that people use (round
figures, pair browsing) is in `db.summaries` and `db.pairs`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from db.models import (
    Base,
    Checkpoint,
    Judgment,
    Metric,
    Pair,
    Prompt,
    Response,
    ResponseLogprob,
    Round,
    Run,
)


def _insert_on_conflict_do_nothing(session: Session, model: type[Base]) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model.__table__).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(model.__table__).on_conflict_do_nothing()
    raise NotImplementedError(f"insert_ignore supports sqlite and postgresql, not {dialect}")


def _by_shape(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by the columns they name (one executemany takes one shape)."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frozenset(row), []).append(row)
    return list(groups.values())


def insert_ignore(session: Session, model: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows, skipping any that collide with a unique key (the loop's write path).

    Rows may name different columns (omitted ones take their defaults). One executemany per
    shape: psycopg pipelines it as a single prepared statement, several times faster on
    PostgreSQL than a counted insert's multi-row VALUES with RETURNING (BENCHMARKS.md).
    """
    if not rows:
        return
    stmt = _insert_on_conflict_do_nothing(session, model)
    connection = session.connection()
    for group in _by_shape(rows):
        connection.execute(stmt, group)


def insert_ignore_counted(
    session: Session, model: type[Base], rows: Sequence[dict[str, Any]]
) -> int:
    """`insert_ignore` that returns how many rows were new (RETURNING counts them on every
    backend: psycopg reports no rowcount for an executemany)."""
    if not rows:
        return 0
    stmt = _insert_on_conflict_do_nothing(session, model).returning(model.__table__.c.id)
    connection = session.connection()
    return sum(len(connection.execute(stmt, group).all()) for group in _by_shape(rows))


def get_run(session: Session, name: str) -> Run | None:
    """The run with this name, if any."""
    return session.scalar(select(Run).where(Run.name == name))


def get_checkpoint(session: Session, run_id: int, round_index: int) -> Checkpoint | None:
    """The checkpoint produced by round `round_index` (-1: the initial policy)."""
    return session.scalar(
        select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.round_index == round_index)
    )


def best_checkpoint(session: Session, run_id: int, before: int | None = None) -> Checkpoint | None:
    """The run's checkpoint with the highest value of its evaluation metric (`heldout_score`;
    the earliest among equals), optionally only among rounds before `before`; None when none
    has been evaluated."""
    stmt = select(Checkpoint).where(
        Checkpoint.run_id == run_id, Checkpoint.heldout_score.is_not(None)
    )
    if before is not None:
        stmt = stmt.where(Checkpoint.round_index < before)
    stmt = stmt.order_by(Checkpoint.heldout_score.desc(), Checkpoint.round_index).limit(1)
    return session.scalar(stmt)


def get_round(session: Session, run_id: int, index: int) -> Round | None:
    """Round `index` of a run, if created."""
    return session.scalar(select(Round).where(Round.run_id == run_id, Round.index == index))


def prompts_missing_responses(
    session: Session, round_id: int, k: int, first: int = 0
) -> list[Prompt]:
    """Prompts of a round with fewer than `k` responses of sample index first … first+k−1."""
    counts = (
        select(Response.prompt_id, func.count().label("n"))
        .where(
            Response.round_id == round_id,
            Response.sample_index >= first,
            Response.sample_index < first + k,
        )
        .group_by(Response.prompt_id)
        .subquery()
    )
    stmt = (
        select(Prompt)
        .outerjoin(counts, counts.c.prompt_id == Prompt.id)
        .where(Prompt.round_id == round_id, func.coalesce(counts.c.n, 0) < k)
        .order_by(Prompt.index)
    )
    return list(session.scalars(stmt))


def judgment_status_counts(session: Session, round_id: int, judge: str) -> dict[str, int]:
    """{status: judgments} of one judge over a round's responses (repeats counted)."""
    stmt = (
        select(Judgment.status, func.count())
        .join(Response, Response.id == Judgment.response_id)
        .where(Response.round_id == round_id, Judgment.judge == judge)
        .group_by(Judgment.status)
    )
    return {status: n for status, n in session.execute(stmt)}


def judgment_traces(
    session: Session, round_id: int, judge: str, prompt_ids: list[int]
) -> list[dict[str, Any] | None]:
    """The traces of one judge's successful judgments of these prompts' responses."""
    stmt = (
        select(Judgment.trace)
        .join(Response, Response.id == Judgment.response_id)
        .where(
            Response.round_id == round_id,
            Response.prompt_id.in_(prompt_ids),
            Judgment.judge == judge,
            Judgment.status == "ok",
        )
    )
    return list(session.scalars(stmt))


def responses_missing_judgment(
    session: Session,
    round_id: int,
    judge: str,
    repeat: int = 0,
    response_ids: Sequence[int] | None = None,
) -> list[tuple[Response, Prompt]]:
    """Responses of a round (or only these of it) without a judgment by `judge`, with prompts."""
    judged = select(Judgment.id).where(
        Judgment.response_id == Response.id, Judgment.judge == judge, Judgment.repeat == repeat
    )
    stmt = (
        select(Response, Prompt)
        .join(Prompt, Prompt.id == Response.prompt_id)
        .where(Response.round_id == round_id, ~judged.exists())
        .order_by(Response.id)
    )
    if response_ids is not None:
        stmt = stmt.where(Response.id.in_(response_ids))
    return [(r, p) for r, p in session.execute(stmt)]


@dataclass(frozen=True)
class ScoredResponse:
    response_id: int
    prompt_id: int
    score: float
    num_tokens: int
    sample_index: int = 0
    text: str = ""
    revises_id: int | None = None  # critique → revise: the response this one rewrites
    finish_reason: str = "stop"  # "length": cut at max_new_tokens (pairing.truncated)


def scored_responses(session: Session, round_id: int, judge: str) -> list[ScoredResponse]:
    """Successful judgments of a round's responses (mean over repeats), in response order.
    A response whose stored mean is not a finite number (a NaN or NULL written by a judge
    before verdicts were checked) is left out, so such rows never reach a pair builder."""
    stmt = (
        select(
            Response.id,
            Response.prompt_id,
            func.avg(Judgment.score),
            Response.num_tokens,
            Response.sample_index,
            Response.text,
            Response.revises_id,
            Response.finish_reason,
        )
        .join(Judgment, Judgment.response_id == Response.id)
        .where(
            Response.round_id == round_id,
            Judgment.judge == judge,
            Judgment.status == "ok",
            Judgment.score.is_not(None),
        )
        .group_by(
            Response.id,
            Response.prompt_id,
            Response.num_tokens,
            Response.sample_index,
            Response.text,
            Response.revises_id,
            Response.finish_reason,
        )
        .order_by(Response.id)
    )
    rows = [ScoredResponse(*row) for row in session.execute(stmt)]
    return [r for r in rows if r.score is not None and math.isfinite(r.score)]


def critiques(session: Session, response_ids: Sequence[int], judge: str) -> dict[int, str]:
    """Response id → the critique text of its successful judgments by `judge` (repeats in
    order, distinct texts joined by newlines); responses without any critique are absent."""
    out: dict[int, list[str]] = {}
    ids = list(response_ids)
    for i in range(0, len(ids), 500):
        stmt = (
            select(Judgment.response_id, Judgment.critique)
            .where(
                Judgment.response_id.in_(ids[i : i + 500]),
                Judgment.judge == judge,
                Judgment.status == "ok",
                Judgment.critique.is_not(None),
            )
            .order_by(Judgment.response_id, Judgment.repeat)
        )
        for rid, text in session.execute(stmt):
            texts = out.setdefault(rid, [])
            if text.strip() and text not in texts:
                texts.append(text)
    return {rid: "\n".join(texts) for rid, texts in out.items() if texts}


def revised_ids(session: Session, round_id: int) -> set[int]:
    """Ids of a round's responses that already have a stored revision."""
    stmt = select(Response.revises_id).where(
        Response.round_id == round_id, Response.revises_id.is_not(None)
    )
    return set(session.scalars(stmt))


CHOSEN = aliased(Response, name="chosen")
REJECTED = aliased(Response, name="rejected")
"""A pair's two responses, as `join_pair_rows` joins them."""


def join_pair_rows(stmt: Select) -> Select:
    """`stmt` (selecting from `pairs`) joined to each pair's prompt and its two responses,
    `CHOSEN` and `REJECTED`: the one join of a pair to its rows."""
    return (
        stmt.join(Prompt, Prompt.id == Pair.prompt_id)
        .join(CHOSEN, CHOSEN.id == Pair.chosen_id)
        .join(REJECTED, REJECTED.id == Pair.rejected_id)
    )


@dataclass(frozen=True)
class TrainingPair:
    pair_id: int
    prompt: str
    chosen_id: int
    chosen_token_ids: list[int]
    rejected_id: int
    rejected_token_ids: list[int]
    chosen_sample_index: int = 0
    rejected_sample_index: int = 0
    chosen_target: float | None = None
    rejected_target: float | None = None
    prompt_messages: list[dict[str, str]] | None = None  # a conversation's turns (None: plain)


def pair_ids(session: Session, round_id: int) -> list[int]:
    """Ids of the pairs a round's own builder made (replayed copies excluded)."""
    stmt = select(Pair.id).where(Pair.round_id == round_id, ~Pair.builder.startswith("replay"))
    return list(session.scalars(stmt.order_by(Pair.id)))


def training_pairs(session: Session, round_id: int) -> list[TrainingPair]:
    """A round's pairs with the prompt (text and a conversation's messages) and both
    responses' token ids, in pair order."""
    stmt = join_pair_rows(
        select(
            Pair.id,
            Prompt.text,
            CHOSEN.id,
            CHOSEN.token_ids,
            REJECTED.id,
            REJECTED.token_ids,
            CHOSEN.sample_index,
            REJECTED.sample_index,
            Pair.chosen_target,
            Pair.rejected_target,
            Prompt.messages,
        )
    )
    stmt = stmt.where(Pair.round_id == round_id).order_by(Pair.id)
    return [TrainingPair(*row) for row in session.execute(stmt)]


def logprobs_for(
    session: Session, checkpoint_id: int, response_ids: Iterable[int]
) -> dict[int, float]:
    """Stored log-probs of these responses under a checkpoint."""
    ids = list(response_ids)
    out: dict[int, float] = {}
    for i in range(0, len(ids), 500):
        stmt = select(ResponseLogprob.response_id, ResponseLogprob.logprob).where(
            ResponseLogprob.checkpoint_id == checkpoint_id,
            ResponseLogprob.response_id.in_(ids[i : i + 500]),
        )
        out.update(dict(session.execute(stmt).all()))
    return out


def delete_metrics(session: Session, run_id: int, round_index: int, stage: str) -> None:
    """Drop a stage's metrics for a round (before that stage is re-run from its start)."""
    session.execute(
        delete(Metric).where(
            Metric.run_id == run_id, Metric.round_index == round_index, Metric.stage == stage
        )
    )
