"""Read-only queries behind `selfplay db …`, the exports and the dashboard.

Every query is bounded: a done round's aggregates are one row of `round_summaries` (written when
the round finished); other rounds' go through the `round_id` indexes; lists are keyset
paginated on the primary key (`WHERE id > :after ORDER BY id LIMIT :n`) and exports stream in
batches of that shape, so nothing here loads a whole table. Each function takes a session and
does not commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Select, case, column, func, select, text
from sqlalchemy.orm import Session, aliased

from db.models import (
    Checkpoint,
    Judgment,
    Metric,
    Pair,
    Prompt,
    Response,
    Round,
    RoundStatus,
    RoundSummaryRecord,
    Run,
)

MAX_PAGE = 500
"""The most rows one list query returns."""


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


def get_run(session: Session, name: str) -> Run:
    """The run with this name; raises NotFound naming it."""
    run = session.scalar(select(Run).where(Run.name == name))
    if run is None:
        raise NotFound(f"no run named {name!r}")
    return run


def select_runs(session: Session, name: str | None = None) -> list[Run]:
    """The run named `name` (NotFound if none), or every run when `name` is None."""
    if name is not None:
        return [get_run(session, name)]
    return list(session.scalars(select(Run).order_by(Run.id)))


def get_run_by_id(session: Session, run_id: int) -> Run:
    """The run with this id; raises NotFound naming it."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run with id {run_id}")
    return run


def get_round(session: Session, run_id: int, index: int) -> Round:
    """Round `index` of a run; raises NotFound naming it."""
    rnd = session.scalar(select(Round).where(Round.run_id == run_id, Round.index == index))
    if rnd is None:
        raise NotFound(f"run {run_id} has no round {index}")
    return rnd


@dataclass
class RoundStats:
    """One round's figures; `None` where the round has nothing to average yet."""

    run: str
    index: int
    status: str
    prompts: int = 0
    responses: int = 0
    mean_response_tokens: float | None = None
    judgments: dict[str, int] = field(default_factory=dict)
    mean_score: float | None = None
    pairs: int = 0
    mean_margin: float | None = None
    mean_chosen_score: float | None = None
    mean_rejected_score: float | None = None
    mean_chosen_tokens: float | None = None
    mean_rejected_tokens: float | None = None
    judge_agreement: float | None = None
    """Among responses with ≥ 2 successful judgments (judges or repeats): the share whose scores
    all agree. None when no response was judged twice."""
    reward_margin: float | None = None
    """Mean of the trainer's logged implicit reward margin over the round's steps."""
    verifier_agreement: float | None = None
    """Judge meta-evaluation (metrics of stage `judge_eval`): the share of (correct, wrong)
    response pairs of a prompt that the judge orders like the task's verifier."""
    position_bias_rate: float | None = None
    """Judge meta-evaluation, pairwise judges: the share of comparisons whose verdict flipped
    with the order of the two responses."""
    heldout_accuracy: float | None = None
    wall_time_s: float = 0.0
    summarized: bool = False
    """True when read from the round's stored summary, False when computed from its rows now."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SUMMARY_FIELDS = tuple(
    c.key
    for c in RoundSummaryRecord.__table__.columns
    if c.key not in ("id", "round_id", "created_at")
)
"""The RoundStats fields a round summary stores (the rest are on the round's row)."""


def stage_metrics(
    session: Session, run_id: int, stage: str, round_index: int | None = None
) -> dict[int, dict[str, float]]:
    """{round index: {name: value}} of a run's metrics of one stage at step 0 (only round
    `round_index` when given), read through the (run, round, stage) index."""
    stmt = select(Metric.round_index, Metric.name, Metric.value).where(
        Metric.run_id == run_id, Metric.stage == stage, Metric.step == 0
    )
    if round_index is not None:
        stmt = stmt.where(Metric.round_index == round_index)
    out: dict[int, dict[str, float]] = {}
    for index, name, value in session.execute(stmt):
        out.setdefault(index, {})[name] = value
    return out


def round_stats(session: Session, run: Run, rnd: Round) -> RoundStats:
    """A round's figures: a done round's from its stored summary, others (or a done round of a
    store made before summaries existed) computed from its rows."""
    rec = session.scalar(select(RoundSummaryRecord).where(RoundSummaryRecord.round_id == rnd.id))
    evals = stage_metrics(session, run.id, "judge_eval", rnd.index)
    return _stats(session, run, rnd, rec, evals.get(rnd.index, {}))


def run_stats(session: Session, run: Run) -> list[RoundStats]:
    """`round_stats` of every round of a run, in order; the summaries come in one query, the
    judge meta-evaluations in another."""
    evals = stage_metrics(session, run.id, "judge_eval")
    return [
        _stats(session, run, rnd, rec, evals.get(rnd.index, {}))
        for rnd, rec in session.execute(
            select(Round, RoundSummaryRecord)
            .outerjoin(RoundSummaryRecord, RoundSummaryRecord.round_id == Round.id)
            .where(Round.run_id == run.id)
            .order_by(Round.index)
        )
    ]


def unsummarized_rounds(session: Session, run: Run) -> list[Round]:
    """A run's done rounds that have no stored summary (finished before summaries existed)."""
    return list(
        session.scalars(
            select(Round)
            .outerjoin(RoundSummaryRecord, RoundSummaryRecord.round_id == Round.id)
            .where(
                Round.run_id == run.id,
                Round.status == RoundStatus.DONE,
                RoundSummaryRecord.id.is_(None),
            )
            .order_by(Round.index)
        )
    )


def _stats(
    session: Session,
    run: Run,
    rnd: Round,
    rec: RoundSummaryRecord | None,
    evals: dict[str, float],
) -> RoundStats:
    """The round's figures (stored or computed) with its judge meta-evaluation `evals`."""
    if rec is None or rnd.status != RoundStatus.DONE:
        st = compute_round_stats(session, run, rnd)
    else:
        st = RoundStats(
            **_head(run, rnd),
            summarized=True,
            **{name: getattr(rec, name) for name in SUMMARY_FIELDS},
        )
    st.verifier_agreement = evals.get("verifier_agreement")
    st.position_bias_rate = evals.get("position_bias_rate")
    return st


def _head(run: Run, rnd: Round) -> dict[str, Any]:
    """The RoundStats fields every round has, stored in `rounds`."""
    return {
        "run": run.name,
        "index": rnd.index,
        "status": rnd.status,
        "heldout_accuracy": rnd.heldout_accuracy,
        "wall_time_s": rnd.wall_time_s,
    }


def compute_round_stats(session: Session, run: Run, rnd: Round) -> RoundStats:
    """A round's figures from its rows; each aggregate reads only the round's rows through an
    index (2–3.5 s for a round of 100 000 pairs on a loaded machine: done rounds store them)."""
    st = RoundStats(**_head(run, rnd))
    st.prompts = session.scalar(select(func.count()).where(Prompt.round_id == rnd.id)) or 0
    st.responses, st.mean_response_tokens = session.execute(
        select(func.count(), func.avg(Response.num_tokens)).where(Response.round_id == rnd.id)
    ).one()
    round_responses = select(Response.id).where(Response.round_id == rnd.id)
    # One pass over the round's judgments: counts by status, the mean ok score, and whether any
    # response can have two judgments at all (a second judge or a repeat; the unique key is
    # (response, judge, repeat)), which the agreement query below needs.
    st.judgments, judges, max_repeat, ok_sum, ok_n = {}, set(), 0, 0.0, 0
    for status, judge, n, n_scored, mean, top_repeat in session.execute(
        select(
            Judgment.status,
            Judgment.judge,
            func.count(),
            func.count(Judgment.score),
            func.avg(Judgment.score),
            func.max(Judgment.repeat),
        )
        .where(Judgment.response_id.in_(round_responses))
        .group_by(Judgment.status, Judgment.judge)
    ):
        st.judgments[status] = st.judgments.get(status, 0) + n
        if status == "ok":
            judges.add(judge)
            max_repeat = max(max_repeat, top_repeat)
            if mean is not None:
                ok_sum, ok_n = ok_sum + float(mean) * n_scored, ok_n + n_scored
    st.mean_score = ok_sum / ok_n if ok_n else None
    chosen, rejected = aliased(Response), aliased(Response)
    (
        st.pairs,
        st.mean_margin,
        st.mean_chosen_score,
        st.mean_rejected_score,
        st.mean_chosen_tokens,
        st.mean_rejected_tokens,
    ) = session.execute(
        select(
            func.count(),
            func.avg(Pair.margin),
            func.avg(Pair.chosen_score),
            func.avg(Pair.rejected_score),
            func.avg(chosen.num_tokens),
            func.avg(rejected.num_tokens),
        )
        .join(chosen, chosen.id == Pair.chosen_id)
        .join(rejected, rejected.id == Pair.rejected_id)
        .where(Pair.round_id == rnd.id)
    ).one()
    if len(judges) > 1 or max_repeat > 0:
        st.judge_agreement = _agreement(session, round_responses)
    st.reward_margin = session.scalar(
        select(func.avg(Metric.value)).where(
            Metric.run_id == run.id,
            Metric.round_index == rnd.index,
            Metric.stage == "train",
            Metric.name == "reward_margin",
        )
    )
    st.mean_response_tokens = _float(st.mean_response_tokens)
    st.mean_chosen_tokens = _float(st.mean_chosen_tokens)
    st.mean_rejected_tokens = _float(st.mean_rejected_tokens)
    return st


def _agreement(session: Session, round_responses: Select) -> float | None:
    """Among responses judged ≥ 2 times (ok), the share whose scores all agree."""
    multi = (
        select(
            Judgment.response_id,
            case((func.max(Judgment.score) == func.min(Judgment.score), 1), else_=0).label("agree"),
        )
        .where(Judgment.response_id.in_(round_responses), Judgment.status == "ok")
        .group_by(Judgment.response_id)
        .having(func.count() >= 2)
        .subquery()
    )
    n_multi, n_agree = session.execute(select(func.count(), func.sum(multi.c.agree))).one()
    return (n_agree or 0) / n_multi if n_multi else None


def _float(x: Any) -> float | None:
    # PostgreSQL's avg over integers is a Decimal.
    return None if x is None else float(x)


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
        run = get_run(session, f.run)
        if f.round is not None:
            round_id = get_round(session, run.id, f.round).id
            stmt = stmt.where(Pair.round_id == round_id)
            prompts = prompts.where(Prompt.round_id == round_id)
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pair_select() -> Select:
    chosen, rejected = aliased(Response), aliased(Response)
    return (
        select(
            Pair.id,
            Run.name,
            Round.index,
            Pair.prompt_id,
            Prompt.text,
            Pair.chosen_id,
            chosen.text,
            Pair.chosen_score,
            Pair.rejected_id,
            rejected.text,
            Pair.rejected_score,
            Pair.margin,
            chosen.num_tokens,
            rejected.num_tokens,
            chosen.checkpoint_id,
            Pair.builder,
        )
        .join(Round, Round.id == Pair.round_id)
        .join(Run, Run.id == Round.run_id)
        .join(Prompt, Prompt.id == Pair.prompt_id)
        .join(chosen, chosen.id == Pair.chosen_id)
        .join(rejected, rejected.id == Pair.rejected_id)
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
    row = session.execute(_pair_select().where(Pair.id == pair_id)).one_or_none()
    if row is None:
        raise NotFound(f"no pair with id {pair_id}")
    pair = PairRow(*row)
    answer, weight = session.execute(
        select(Prompt.answer, Pair.weight)
        .join(Pair, Pair.prompt_id == Prompt.id)
        .where(Pair.id == pair_id)
    ).one()
    return PairDetail(
        pair,
        answer,
        weight,
        _response_info(session, pair.chosen_id),
        _response_info(session, pair.rejected_id),
    )


def round_metrics(
    session: Session, run_id: int, round_index: int, stage: str
) -> dict[str, list[tuple[int, float]]]:
    """A round's logged metrics of one stage, as name -> [(step, value)] in step order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in session.execute(
        select(Metric.name, Metric.step, Metric.value)
        .where(Metric.run_id == run_id, Metric.round_index == round_index, Metric.stage == stage)
        .order_by(Metric.name, Metric.step)
    ):
        out.setdefault(name, []).append((step, value))
    return out


def get_initial_accuracy(session: Session, run_id: int) -> float | None:
    """Held-out accuracy of the run's initial (round -1) policy, if evaluated."""
    return session.scalar(
        select(Checkpoint.heldout_accuracy).where(
            Checkpoint.run_id == run_id, Checkpoint.round_index == -1
        )
    )
