"""Pair browsing: the filters shared by `db pairs`, `db export` and the dashboard's pair browser,
the prompt search, keyset pages, and a pair in detail.

Lists are keyset paginated on the primary key (`WHERE id > :after ORDER BY id LIMIT :n`) and
exports stream in pages of that shape, so nothing here loads a whole table. Each function takes
a session and does not commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Select, column, select, text
from sqlalchemy.orm import Session

from db.models import Checkpoint, Judgment, Pair, Prompt, Response, Round, Run
from db.queries import CHOSEN, REJECTED, get_round, join_pair_rows
from db.runs import InspectError, NotFound, select_runs

MAX_PAGE = 500
"""The most rows one list query returns."""


@dataclass(frozen=True)
class PairFilter:
    """Filters shared by `db pairs`, `db export` and the pair browser."""

    run: str | None = None
    round: int | None = None
    judge: str | None = None
    min_margin: float | None = None
    search: str | None = None

    def __post_init__(self) -> None:
        if self.round is not None and self.run is None:
            raise InspectError("round: a round index needs a run (--run NAME)")
        if self.round is not None and self.round < 0:
            raise InspectError(f"round: must be ≥ 0, got {self.round}")
        if self.min_margin is not None and self.min_margin != self.min_margin:
            raise InspectError("min_margin: must be a number, got NaN")
        if self.search is not None and not self.search.strip():
            raise InspectError("search: must not be blank")
        if self.search is not None and len(self.search) > 200:
            raise InspectError("search: at most 200 characters")


def _filtered(session: Session, stmt: Select, f: PairFilter) -> Select:
    prompts = select(Prompt.id)
    if f.run is not None:
        (run,) = select_runs(session, f.run)
        if f.round is not None:
            rnd = get_round(session, run.id, f.round)
            if rnd is None:
                raise NotFound(f"run {run.id} has no round {f.round}")
            stmt = stmt.where(Pair.round_id == rnd.id)
            prompts = prompts.where(Prompt.round_id == rnd.id)
        else:
            run_rounds = select(Round.id).where(Round.run_id == run.id)
            stmt = stmt.where(Pair.round_id.in_(run_rounds))
            prompts = prompts.where(Prompt.round_id.in_(run_rounds))
    if f.judge is not None:
        stmt = stmt.where(
            select(Judgment.id)
            .where(Judgment.response_id == Pair.chosen_id, Judgment.judge == f.judge)
            .exists()
        )
    if f.min_margin is not None:
        stmt = stmt.where(Pair.margin >= f.min_margin)
    if f.search is not None:
        # PostgreSQL answers this LIKE from the pg_trgm index when migration 0004 could create it;
        # without an index it scans the (run's, round's) prompts.
        pattern = "%" + f.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        prompts = prompts.where(Prompt.text.like(pattern, escape="\\"))
        if len(f.search) >= 3 and _has_sqlite_fts(session):
            # The trigram index gives candidates (a superset: it ignores case); LIKE decides.
            phrase = '"' + f.search.replace('"', '""') + '"'
            candidates = text(f"SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :phrase")
            prompts = prompts.where(
                Prompt.id.in_(candidates.bindparams(phrase=phrase).columns(column("rowid")))
            )
        stmt = stmt.where(Pair.prompt_id.in_(prompts))
    return stmt


FTS_TABLE = "prompts_fts"
"""SQLite's FTS5 trigram index of prompts.text (migration 0004), where SQLite has the tokenizer."""


def _has_sqlite_fts(session: Session) -> bool:
    if session.get_bind().dialect.name != "sqlite":
        return False
    exists = text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name")
    return session.scalar(exists, {"name": FTS_TABLE}) is not None


@dataclass(frozen=True)
class PairRow:
    id: int
    run: str
    round: int
    prompt_id: int
    prompt: str
    chosen_id: int
    chosen: str
    chosen_score: float
    rejected_id: int
    rejected: str
    rejected_score: float
    margin: float
    chosen_tokens: int
    rejected_tokens: int
    checkpoint_id: int
    builder: str
    prompt_messages: list[dict[str, str]] | None  # a conversation's turns; None: plain text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pair_select() -> Select:
    return (
        join_pair_rows(
            select(
                Pair.id,
                Run.name,
                Round.index,
                Pair.prompt_id,
                Prompt.text,
                Pair.chosen_id,
                CHOSEN.text,
                Pair.chosen_score,
                Pair.rejected_id,
                REJECTED.text,
                Pair.rejected_score,
                Pair.margin,
                CHOSEN.num_tokens,
                REJECTED.num_tokens,
                CHOSEN.checkpoint_id,
                Pair.builder,
                Prompt.messages,
            ).select_from(Pair)
        )
        .join(Round, Round.id == Pair.round_id)
        .join(Run, Run.id == Round.run_id)
    )


def list_pairs(session: Session, f: PairFilter, after: int = 0, limit: int = 50) -> list[PairRow]:
    """Pairs matching `f` with id > `after`, in id order, at most `limit` (keyset pagination)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InspectError(f"limit: must be between 1 and {MAX_PAGE}, got {limit}")
    if after < 0:
        raise InspectError(f"after: must be ≥ 0, got {after}")
    return _page(session, f, after, limit)


def _page(session: Session, f: PairFilter, after: int, limit: int) -> list[PairRow]:
    # Page the bare ids first (index-only where the filters allow), then join the page's rows.
    ids = _filtered(session, select(Pair.id), f).where(Pair.id > after)
    ids = ids.order_by(Pair.id).limit(limit).subquery()
    stmt = _pair_select().where(Pair.id.in_(select(ids.c.id))).order_by(Pair.id)
    return [PairRow(*row) for row in session.execute(stmt)]


def has_conversations(session: Session, f: PairFilter) -> bool:
    """Whether a pair matching `f` has a conversation prompt (`prompts.messages` set)."""
    stmt = _filtered(session, select(Pair.id), f).join(Prompt, Prompt.id == Pair.prompt_id)
    stmt = stmt.where(Prompt.messages.is_not(None))
    return session.scalar(stmt.limit(1)) is not None


def iter_pairs(session: Session, f: PairFilter, batch: int = 5000) -> Iterator[list[PairRow]]:
    """Every pair matching `f`, in id order, one keyset page at a time (memory flat in rows)."""
    after = 0
    while True:
        page = _page(session, f, after, batch)
        if not page:
            return
        yield page
        after = page[-1].id


@dataclass(frozen=True)
class JudgmentInfo:
    id: int
    judge: str
    repeat: int
    status: str
    score: float | None
    critique: str | None
    trace: dict[str, Any] | None
    error: str | None
    latency_s: float | None


@dataclass(frozen=True)
class ResponseInfo:
    id: int
    sample_index: int
    text: str
    num_tokens: int
    logprob: float
    finish_reason: str
    checkpoint_id: int
    checkpoint_path: str
    checkpoint_round: int
    judgments: list[JudgmentInfo]


@dataclass(frozen=True)
class PairDetail:
    pair: PairRow
    answer: str | None
    weight: float
    chosen: ResponseInfo
    rejected: ResponseInfo

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _response_info(session: Session, response_id: int) -> ResponseInfo:
    resp = session.get(Response, response_id)
    ckpt = session.get(Checkpoint, resp.checkpoint_id)
    judgments = [
        JudgmentInfo(
            j.id, j.judge, j.repeat, j.status, j.score, j.critique, j.trace, j.error, j.latency_s
        )
        for j in session.scalars(
            select(Judgment)
            .where(Judgment.response_id == response_id)
            .order_by(Judgment.judge, Judgment.repeat)
        )
    ]
    return ResponseInfo(
        resp.id,
        resp.sample_index,
        resp.text,
        resp.num_tokens,
        resp.logprob,
        resp.finish_reason,
        ckpt.id,
        ckpt.path,
        ckpt.round_index,
        judgments,
    )


def pair_detail(session: Session, pair_id: int) -> PairDetail:
    """A pair with both responses, all their judgments and the generating checkpoint."""
    stmt = _pair_select().add_columns(Prompt.answer, Pair.weight).where(Pair.id == pair_id)
    row = session.execute(stmt).one_or_none()
    if row is None:
        raise NotFound(f"no pair with id {pair_id}")
    *columns, answer, weight = row
    pair = PairRow(*columns)
    return PairDetail(
        pair,
        answer,
        weight,
        _response_info(session, pair.chosen_id),
        _response_info(session, pair.rejected_id),
    )
