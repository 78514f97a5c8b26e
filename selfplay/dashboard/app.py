"""The read-only dashboard: FastAPI, server-rendered Jinja2 pages, inline SVG plots.

Pages: `/` runs; `/runs/{id}` a run's rounds with plots (its held-out evaluation in the run's
metric: accuracy, win rate with its ±2 SE band and the LC win rate, or judge score with its
band); `/runs/{id}/rounds/{index}` one round (figures, its evaluation's, training curves); `/pairs` the pair browser (filters, search, keyset pages);
`/pairs/{id}` a pair side by side. Unknown ids give 404 pages and malformed parameters 400 pages.
A done round's figures are read from its stored summary (written when it finished); rounds still
running, and done rounds of a store that predates summaries, are computed on each view.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from db.engine import make_engine
from db.models import Run
from db.pairs import PairFilter, list_pairs, pair_detail
from db.queries import get_checkpoint, get_run
from db.runs import (
    INITIAL_ROUND_INDEX,
    InspectError,
    NotFound,
    checkpoint_figures,
    evaluation_kind,
    list_runs,
)
from db.summaries import (
    RoundSummary,
    round_metrics,
    round_summaries,
    round_summary,
    stage_metrics,
)
from selfplay.dashboard.svg import Band, line_chart
from selfplay.progress import format_evaluation
from selfplay.redact import mask_url

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
MAX_ID = 2**63 - 1  # a bigger integer would overflow the database's INTEGER
COOKIE = "selfplay_token"

Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]


def create_app(db_url: str, token: str | None = None) -> FastAPI:
    """The dashboard of the store at `db_url`; with `token`, every page requires it."""
    engine = make_engine(db_url)

    def sessions() -> Session:
        return Session(bind=engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(title="selfplay dashboard", lifespan=lifespan, docs_url=None, redoc_url=None)

    def page(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(
            request, template, {"db_url": mask_url(db_url), **ctx}, status_code=status
        )

    def error(request: Request, status: int, message: str) -> HTMLResponse:
        return page(request, "error.html", status=status, status_code=status, message=message)

    @app.middleware("http")
    async def require_token(request: Request, call_next: Callable) -> Response:
        if token is None:
            return await call_next(request)
        given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return error(request, 401, "this dashboard needs its access token: open /?token=…")
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> HTMLResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
            for e in exc.errors()
        )
        return error(request, 400, f"bad request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        return error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> HTMLResponse:
        return error(request, 404, str(exc))

    @app.exception_handler(InspectError)
    async def bad_filter(request: Request, exc: InspectError) -> HTMLResponse:
        return error(request, 400, str(exc))

    @app.get("/", response_class=HTMLResponse)
    def runs_page(request: Request) -> HTMLResponse:
        with sessions() as s:
            runs = list_runs(s)
        return page(request, "runs.html", runs=runs)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: Id) -> HTMLResponse:
        with sessions() as s:
            run = _run(s, run_id)
            stats = round_summaries(s, run.id)
            initial_checkpoint = get_checkpoint(s, run.id, INITIAL_ROUND_INDEX)
            initial = (
                {} if initial_checkpoint is None else checkpoint_figures(s, initial_checkpoint)
            )
            kind = evaluation_kind(s, run.id)
            name = run.name
        return page(
            request,
            "run.html",
            run_id=run_id,
            name=name,
            stats=stats,
            evaluation=kind,
            initial=_initial_line(kind, initial),
            has_accuracy=initial.get("heldout_accuracy") is not None
            or any(st.heldout_accuracy is not None for st in stats),
            plots=_run_plots(stats, kind, initial),
        )

    @app.get("/runs/{run_id}/rounds/{index}", response_class=HTMLResponse)
    def round_page(
        request: Request, run_id: Id, index: Annotated[int, PathParam(ge=0, le=MAX_ID)]
    ) -> HTMLResponse:
        with sessions() as s:
            run = _run(s, run_id)
            st = round_summary(s, run.id, index)
            train = round_metrics(s, run.id, index, "train")
            evaluation = stage_metrics(s, run.id, "eval", index).get(index, {})
            name = run.name
        plots = []
        for metric in ("loss", "reward_margin", "preference_accuracy"):
            if metric in train:
                steps = [step for step, _ in train[metric]]
                plots.append(
                    line_chart(
                        f"training {metric}",
                        steps,
                        {metric: [v for _, v in train[metric]]},
                        x_label="step",
                    )
                )
        return page(
            request,
            "round.html",
            run_id=run_id,
            name=name,
            st=st,
            evaluation=evaluation,
            error_text=st.error,
            plots=plots,
        )

    @app.get("/pairs", response_class=HTMLResponse)
    def pairs_page(
        request: Request,
        run: Annotated[str | None, Query(max_length=200)] = None,
        round: Annotated[str | None, Query(max_length=30)] = None,
        judge: Annotated[str | None, Query(max_length=100)] = None,
        min_margin: Annotated[str | None, Query(max_length=30)] = None,
        search: Annotated[str | None, Query(max_length=200)] = None,
        after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> HTMLResponse:
        # The filter form submits empty fields: an empty value means no filter.
        round = _parse(round, int, "round", lambda v: 0 <= v <= MAX_ID)
        min_margin = _parse(min_margin, float, "min_margin", math.isfinite)
        f = PairFilter(
            run=run or None,
            round=round,
            judge=judge or None,
            min_margin=min_margin,
            search=search or None,
        )
        with sessions() as s:
            rows = list_pairs(s, f, after=after, limit=limit)
        if after and not rows:
            raise NotFound(f"no pairs after id {after} match these filters")
        params = {
            k: v
            for k, v in (
                ("run", run),
                ("round", round),
                ("judge", judge),
                ("min_margin", min_margin),
                ("search", search),
                ("limit", limit if limit != 50 else None),
            )
            if v not in (None, "")
        }
        next_after = rows[-1].id if len(rows) == limit else None
        return page(
            request, "pairs.html", rows=rows, params=params, after=after, next_after=next_after
        )

    @app.get("/pairs/{pair_id}", response_class=HTMLResponse)
    def pair_page(request: Request, pair_id: Id) -> HTMLResponse:
        with sessions() as s:
            detail = pair_detail(s, pair_id)
            run_id = get_run(s, detail.pair.run).id
        return page(request, "pair.html", d=detail, run_id=run_id)

    return app


def _run(session: Session, run_id: int) -> Run:
    """The run with this id; raises NotFound naming it."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run with id {run_id}")
    return run


def _parse(raw: str | None, kind: type, name: str, ok: Callable[[Any], bool]) -> Any:
    if raw is None or not raw.strip():
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise InspectError(f"{name}: not a valid {kind.__name__} here: {raw!r}")
    return value


def _initial_line(kind: str, figures: dict[str, float | None]) -> str | None:
    """The initial policy's evaluation in the run's terms ("held-out win rate 0.500 (LC
    0.500)"); None when it has no figure yet."""
    measured = {"accuracy": "heldout_accuracy"}.get(kind, kind)
    return None if figures.get(measured) is None else format_evaluation(kind, figures)


def _se_band(
    label: str,
    values: list[float | None],
    ses: list[float | None],
    bounds: tuple[float, float] | None = None,
) -> Band:
    """The band value ± 2 SE (within `bounds` when given); None where either is missing."""
    lo: list[float | None] = []
    hi: list[float | None] = []
    for v, se in zip(values, ses, strict=True):
        if v is None or se is None:
            lo.append(None)
            hi.append(None)
            continue
        a, b = v - 2 * se, v + 2 * se
        if bounds is not None:
            a, b = max(a, bounds[0]), min(b, bounds[1])
        lo.append(a)
        hi.append(b)
    return label, lo, hi


def _evaluation_plots(
    stats: list[RoundSummary], kind: str, initial: dict[str, float | None]
) -> list[Any]:
    """The held-out evaluation per round, the initial policy at round -1 when it has the
    figure: win rate with its ±2 SE band and the LC win rate, or judge score with its band;
    accuracy for accuracy runs and beside the others when some is stored."""
    rounds = [st.to_dict() for st in stats]

    def over_rounds(*names: str) -> tuple[list[int], dict[str, list[float | None]]]:
        xs, rows = [st.index for st in stats], rounds
        if any(initial.get(name) is not None for name in names):
            xs, rows = [INITIAL_ROUND_INDEX, *xs], [initial, *rounds]
        return xs, {name: [row.get(name) for row in rows] for name in names}

    plots = []
    if kind == "win_rate":
        xs, ys = over_rounds("win_rate", "win_rate_se", "win_rate_lc")
        band = _se_band("win rate ± 2 SE", ys["win_rate"], ys["win_rate_se"], (0.0, 1.0))
        plots.append(
            line_chart(
                "held-out win rate ± 2 SE (round -1: initial policy)",
                xs,
                {"win rate": ys["win_rate"], "LC win rate": ys["win_rate_lc"]},
                bands={"win rate": band},
            )
        )
    elif kind == "judge_score":
        xs, ys = over_rounds("judge_score", "judge_score_se")
        band = _se_band("judge score ± 2 SE", ys["judge_score"], ys["judge_score_se"])
        plots.append(
            line_chart(
                "held-out judge score ± 2 SE (round -1: initial policy)",
                xs,
                {"judge score": ys["judge_score"]},
                bands={"judge score": band},
            )
        )
    xs, ys = over_rounds("heldout_accuracy")
    if kind == "accuracy" or any(a is not None for a in ys["heldout_accuracy"]):
        title = "held-out accuracy (round -1: initial policy)"
        plots.append(line_chart(title, xs, {"accuracy": ys["heldout_accuracy"]}))
    return plots


def _run_plots(stats: list[RoundSummary], kind: str, initial: dict[str, float | None]) -> list[Any]:
    xs = [st.index for st in stats]
    plots = [
        *_evaluation_plots(stats, kind, initial),
        line_chart(
            "mean judge score",
            xs,
            {
                "all responses": [st.mean_score for st in stats],
                "chosen": [st.mean_chosen_score for st in stats],
                "rejected": [st.mean_rejected_score for st in stats],
            },
        ),
        line_chart("pairs", xs, {"pairs": [float(st.pairs) for st in stats]}),
        line_chart(
            "chosen vs rejected length (tokens)",
            xs,
            {
                "chosen": [st.mean_chosen_tokens for st in stats],
                "rejected": [st.mean_rejected_tokens for st in stats],
            },
        ),
        line_chart(
            "margins",
            xs,
            {
                "score margin": [st.mean_margin for st in stats],
                "reward margin (train)": [st.reward_margin for st in stats],
            },
        ),
    ]
    if any(st.judge_agreement is not None for st in stats):
        plots.append(
            line_chart("judge agreement", xs, {"agreement": [st.judge_agreement for st in stats]})
        )
    meta = {
        "agreement with the verifier": [st.verifier_agreement for st in stats],
        "position-bias rate": [st.position_bias_rate for st in stats],
    }
    meta = {name: ys for name, ys in meta.items() if any(y is not None for y in ys)}
    if meta:
        plots.append(line_chart("judge meta-evaluation", xs, meta))
    return plots
