"""Runs as people name them (`selfplay db …`, the dashboard): the list of runs, selection by
name, the evaluation figure their views show, and the errors of the read side. Each function
takes a session and does not commit."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.models import Checkpoint, Metric, Round, Run
from db.queries import get_run


class InspectError(ValueError):
    """A bad filter or an unknown id: the message names which (CLI exit 1, HTTP 400/404)."""


class NotFound(InspectError):
    """An id or name that is not in the store."""


INITIAL_ROUND_INDEX = -1
"""The round index of a run's initial (SFT or external) checkpoint."""
EVALUATION_KINDS = ("accuracy", "win_rate", "judge_score")
"""What a run's views show as its evaluation (`evaluation_kind`); win_rate covers win_rate_lc."""


@dataclass(frozen=True)
class RunInfo:
    id: int
    name: str
    created_at: str
    rounds: int
    rounds_done: int
    last_heldout_accuracy: float | None
    last_heldout_score: float | None = None
    """The latest checkpoint's value of the run's evaluation metric (checkpoints.heldout_score)."""
    evaluation: str = "accuracy"
    """What that value is (`evaluation_kind`): accuracy, win_rate or judge_score."""


def list_runs(session: Session) -> list[RunInfo]:
    """Every run with its round count, its latest held-out accuracy and its latest held-out
    score in the run's metric (runs are few)."""
    done = func.sum(case((Round.status == "done", 1), else_=0))
    counts = (
        select(Round.run_id, func.count().label("n"), done.label("done"))
        .group_by(Round.run_id)
        .subquery()
    )
    out = []
    for run, n, n_done in session.execute(
        select(Run, counts.c.n, counts.c.done)
        .outerjoin(counts, counts.c.run_id == Run.id)
        .order_by(Run.id)
    ):
        last = session.scalar(
            select(Checkpoint.heldout_accuracy)
            .where(Checkpoint.run_id == run.id, Checkpoint.heldout_accuracy.is_not(None))
            .order_by(Checkpoint.round_index.desc())
            .limit(1)
        )
        score = session.scalar(
            select(Checkpoint.heldout_score)
            .where(Checkpoint.run_id == run.id, Checkpoint.heldout_score.is_not(None))
            .order_by(Checkpoint.round_index.desc())
            .limit(1)
        )
        out.append(
            RunInfo(
                run.id,
                run.name,
                run.created_at.isoformat(),
                n or 0,
                int(n_done or 0),
                last,
                score,
                evaluation_kind(session, run.id),
            )
        )
    return out


def evaluation_kind(session: Session, run_id: int) -> str:
    """Which of EVALUATION_KINDS a run's checkpoints were evaluated by, read from what is
    stored: win_rate or judge_score when some checkpoint has those metrics of stage `eval`
    (or only their failure counts);
    win_rate too when only the initial policy is evaluated yet, with a score (0.5, its own
    win-rate baseline) but no accuracy; accuracy otherwise."""
    # An evaluation whose every judgment failed stores only its failure count.
    names = ("win_rate", "win_rate_failed", "judge_score", "judge_score_failed")
    measured = set(
        session.scalars(
            select(Metric.name)
            .where(Metric.run_id == run_id, Metric.stage == "eval", Metric.name.in_(names))
            .distinct()
        )
    )
    for kind in ("win_rate", "judge_score"):
        if {kind, f"{kind}_failed"} & measured:
            return kind
    initial = session.execute(
        select(Checkpoint.heldout_accuracy, Checkpoint.heldout_score).where(
            Checkpoint.run_id == run_id, Checkpoint.round_index == INITIAL_ROUND_INDEX
        )
    ).first()
    if initial is not None and initial[0] is None and initial[1] is not None:
        return "win_rate"
    return "accuracy"


def checkpoint_figures(session: Session, ckpt: Checkpoint) -> dict[str, float | None]:
    """A checkpoint's evaluation figures (its metrics of stage `eval`, step 0, at its round
    index), with its held-out accuracy and, for the initial policy evaluated as its own
    win-rate baseline (no win-rate rows), its score as win_rate and win_rate_lc (0.5)."""
    figures: dict[str, float | None] = {
        name: value
        for name, value in session.execute(
            select(Metric.name, Metric.value).where(
                Metric.run_id == ckpt.run_id,
                Metric.round_index == ckpt.round_index,
                Metric.stage == "eval",
                Metric.step == 0,
            )
        )
    }
    figures["heldout_accuracy"] = ckpt.heldout_accuracy
    if ckpt.round_index == INITIAL_ROUND_INDEX and "win_rate" not in figures:
        figures |= {"win_rate": ckpt.heldout_score, "win_rate_lc": ckpt.heldout_score}
    return figures


def select_runs(session: Session, name: str | None = None) -> list[Run]:
    """The run named `name` (NotFound naming it if there is none), or every run in id order
    when `name` is None."""
    if name is None:
        return list(session.scalars(select(Run).order_by(Run.id)))
    run = get_run(session, name)
    if run is None:
        raise NotFound(f"no run named {name!r}")
    return [run]
