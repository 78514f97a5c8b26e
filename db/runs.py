"""Runs as people name them (`selfplay db …`, the dashboard): the list of runs, selection by
name, and the errors of the read side. Each function takes a session and does not commit."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.models import Checkpoint, Round, Run
from db.queries import get_run


class InspectError(ValueError):
    """A bad filter or an unknown id: the message names which (CLI exit 1, HTTP 400/404)."""


class NotFound(InspectError):
    """An id or name that is not in the store."""


@dataclass(frozen=True)
class RunInfo:
    id: int
    name: str
    created_at: str
    rounds: int
    rounds_done: int
    last_heldout_accuracy: float | None


def list_runs(session: Session) -> list[RunInfo]:
    """Every run with its round count and its latest held-out accuracy (runs are few)."""
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
        out.append(
            RunInfo(run.id, run.name, run.created_at.isoformat(), n or 0, int(n_done or 0), last)
        )
    return out


def select_runs(session: Session, name: str | None = None) -> list[Run]:
    """The run named `name` (NotFound naming it if there is none), or every run in id order
    when `name` is None."""
    if name is None:
        return list(session.scalars(select(Run).order_by(Run.id)))
    run = get_run(session, name)
    if run is None:
        raise NotFound(f"no run named {name!r}")
    return [run]
