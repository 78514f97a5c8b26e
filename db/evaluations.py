"""Reads of the open-ended evaluation's rows (eval_responses, eval_scores, eval_comparisons):
what is missing, and what the win rate and judge score are computed from. Each function takes
a session and does not commit."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from db.models import EvalComparison, EvalResponse, EvalScore


@dataclass(frozen=True)
class EvalText:
    """An evaluation response: its id, held-out prompt index and text."""

    id: int
    heldout_index: int
    text: str


def eval_responses(session: Session, checkpoint_id: int) -> dict[int, EvalText]:
    """A checkpoint's evaluation responses by held-out index."""
    rows = session.execute(
        select(EvalResponse.id, EvalResponse.heldout_index, EvalResponse.text).where(
            EvalResponse.checkpoint_id == checkpoint_id
        )
    ).all()
    return {index: EvalText(rid, index, text) for rid, index, text in rows}


def unscored(session: Session, checkpoint_id: int, judge: str) -> list[EvalText]:
    """A checkpoint's evaluation responses without a (repeat 0) score of `judge`, by index."""
    scored = select(EvalScore.response_id).where(EvalScore.judge == judge, EvalScore.repeat == 0)
    rows = session.execute(
        select(EvalResponse.id, EvalResponse.heldout_index, EvalResponse.text)
        .where(EvalResponse.checkpoint_id == checkpoint_id, EvalResponse.id.not_in(scored))
        .order_by(EvalResponse.heldout_index)
    ).all()
    return [EvalText(*row) for row in rows]


def scores(session: Session, checkpoint_id: int, judge: str) -> dict[int, float | None]:
    """held-out index → `judge`'s score of the checkpoint's response (None when it failed)."""
    rows = session.execute(
        select(EvalResponse.heldout_index, EvalScore.score)
        .join(EvalScore, EvalScore.response_id == EvalResponse.id)
        .where(
            EvalResponse.checkpoint_id == checkpoint_id,
            EvalScore.judge == judge,
            EvalScore.repeat == 0,
        )
    ).all()
    return dict(rows)


def uncompared(
    session: Session, checkpoint_id: int, baseline_checkpoint_id: int, judge: str
) -> list[tuple[EvalText, EvalText]]:
    """(response, baseline response) of each held-out prompt both checkpoints answered that
    has no (repeat 0) comparison by `judge` yet, by index."""
    mine, theirs = aliased(EvalResponse), aliased(EvalResponse)
    done = select(EvalComparison.id).where(
        EvalComparison.response_id == mine.id,
        EvalComparison.baseline_id == theirs.id,
        EvalComparison.judge == judge,
        EvalComparison.repeat == 0,
    )
    rows = session.execute(
        select(mine.id, mine.heldout_index, mine.text, theirs.id, theirs.text)
        .join(theirs, theirs.heldout_index == mine.heldout_index)
        .where(
            mine.checkpoint_id == checkpoint_id,
            theirs.checkpoint_id == baseline_checkpoint_id,
            ~done.exists(),
        )
        .order_by(mine.heldout_index)
    ).all()
    return [(EvalText(a, i, at), EvalText(b, i, bt)) for a, i, at, b, bt in rows]


def comparison_outcomes(
    session: Session, checkpoint_id: int, baseline_checkpoint_id: int, judge: str
) -> dict[int, float | None]:
    """held-out index → P(the checkpoint's response ≻ the baseline's) by `judge` (None when
    the comparison failed)."""
    mine, theirs = aliased(EvalResponse), aliased(EvalResponse)
    rows = session.execute(
        select(mine.heldout_index, EvalComparison.outcome)
        .join(EvalComparison, EvalComparison.response_id == mine.id)
        .join(theirs, theirs.id == EvalComparison.baseline_id)
        .where(
            mine.checkpoint_id == checkpoint_id,
            theirs.checkpoint_id == baseline_checkpoint_id,
            EvalComparison.judge == judge,
            EvalComparison.repeat == 0,
        )
    ).all()
    return dict(rows)
