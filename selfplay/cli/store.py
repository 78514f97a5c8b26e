"""The commands that read the store: `selfplay db …`, `selfplay status`, `selfplay dashboard`.

Rich tables for people, `--json` for scripts; a bad filter or an unknown id exits 1 naming it.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from db.pairs import PairFilter
from db.runs import InspectError
from selfplay.cli.common import DbOption, db_url, fail, out, store_session
from selfplay.progress import format_accuracy
from selfplay.redact import mask_url

if TYPE_CHECKING:
    from db.models import Checkpoint
    from db.summaries import RoundSummary

db_app = typer.Typer(no_args_is_help=True, help="Manage and inspect the preference store.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RunOption = Annotated[str | None, typer.Option("--run", help="Run name.")]
MAX_ID = 2**63 - 1  # beyond this an id overflows the database's INTEGER
RoundOption = Annotated[
    int | None, typer.Option("--round", min=0, max=MAX_ID, help="Round index (needs --run).")
]
JudgeOption = Annotated[
    str | None, typer.Option("--judge", help="Only pairs whose chosen response this judge scored.")
]
MarginOption = Annotated[
    float | None, typer.Option("--min-margin", help="Only pairs with margin ≥ this.")
]
SearchOption = Annotated[
    str | None, typer.Option("--search", help="Only pairs whose prompt contains this text.")
]


def _filter(
    run: str | None, round_: int | None, judge: str | None, margin: float | None, search: str | None
) -> PairFilter:
    try:
        return PairFilter(run=run, round=round_, judge=judge, min_margin=margin, search=search)
    except InspectError as e:
        raise fail(str(e), 1) from None


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _share(count: int, share: float | None) -> str:
    return "" if share is None else f"{count} ({share:.0%})"


def _why_no_pairs(st: RoundSummary) -> str:
    return (st.no_pairs_reason or "").removeprefix("0 pairs: ")


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Create or migrate the store's schema to the latest revision."""
    from db.engine import make_engine
    from db.migrate import current_revision, upgrade

    engine = make_engine(db_url(db))
    upgrade(engine)
    out.print(f"store {mask_url(db_url(db))} at revision {current_revision(engine)}")
    engine.dispose()


@db_app.command("stats")
def db_stats(
    db: DbOption = None,
    run: RunOption = None,
    round_: RoundOption = None,
    as_json: JsonOption = False,
) -> None:
    """Per run and round: prompts, responses, judgments by status, pairs, accuracy, scores, lengths."""
    from db.runs import select_runs
    from db.summaries import round_summaries, round_summary

    with store_session(db) as s:
        if round_ is not None and run is None:
            raise InspectError("round: a round index needs a run (--run NAME)")
        stats = []
        for r in select_runs(s, run):
            if round_ is None:
                stats.extend(round_summaries(s, r.id))
            else:
                stats.append(round_summary(s, r.id, round_))
    if as_json:
        _print_json([st.to_dict() for st in stats])
        return
    # One column per round (8 to a table), one row per figure: narrow enough for a terminal.
    for run_name in dict.fromkeys(st.run for st in stats):
        rows = [st for st in stats if st.run == run_name]
        for i in range(0, len(rows), 8):
            out.print(_stats_table(run_name, rows[i : i + 8]), highlight=False)


_EVAL_FIGURES = (
    ("win rate", "win_rate"),
    ("win rate SE", "win_rate_se"),
    ("LC win rate", "win_rate_lc"),
    ("judge score", "judge_score"),
    ("judge score SE", "judge_score_se"),
)
"""`db stats` rows (label, RoundSummary field) of the open-ended evaluation."""


def _stats_table(run_name: str, stats: list[RoundSummary]) -> Table:
    table = Table(title=f"run {run_name}")
    table.add_column("round")
    for st in stats:
        table.add_column(str(st.index), justify="right")
    figures = [
        ("status", lambda st: st.status),
        ("prompts", lambda st: str(st.prompts)),
        ("responses", lambda st: str(st.responses)),
        ("truncated", lambda st: _share(st.truncated_responses, st.truncated_share)),
        ("mean tokens", lambda st: _fmt(st.mean_response_tokens, 1)),
        ("judgments", lambda st: " ".join(f"{k}:{v}" for k, v in sorted(st.judgments.items()))),
        ("mean score", lambda st: _fmt(st.mean_score)),
        ("pairs", lambda st: str(st.pairs)),
        ("why no pairs", lambda st: _why_no_pairs(st)),
        ("chosen score", lambda st: _fmt(st.mean_chosen_score)),
        ("rejected score", lambda st: _fmt(st.mean_rejected_score)),
        ("margin", lambda st: _fmt(st.mean_margin)),
        ("chosen tokens", lambda st: _fmt(st.mean_chosen_tokens, 1)),
        ("rejected tokens", lambda st: _fmt(st.mean_rejected_tokens, 1)),
        ("judge agreement", lambda st: _fmt(st.judge_agreement)),
        ("agreement with verifier", lambda st: _fmt(st.verifier_agreement)),
        ("position-bias rate", lambda st: _fmt(st.position_bias_rate)),
        ("reward margin", lambda st: _fmt(st.reward_margin)),
        ("held-out acc", lambda st: _fmt(st.heldout_accuracy)),
        ("wall time", lambda st: f"{st.wall_time_s:.1f}s"),
    ]
    # The open-ended evaluation's figures, when some round of the table has them.
    for label, name in _EVAL_FIGURES:
        if any(getattr(st, name) is not None for st in stats):
            figures.insert(-1, (label, lambda st, name=name: _fmt(getattr(st, name))))
    for label, get in figures:
        table.add_row(label, *(get(st) for st in stats))
    return table


def status(
    db: DbOption = None,
    run_name: Annotated[str | None, typer.Option("--run", help="Run name (default: all).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Print each run's rounds: stage, pairs, the evaluation in the run's metric (held-out
    accuracy; win rate ± SE and LC win rate, or judge score ± SE), wall time, and the judge's
    meta-evaluation (agreement with the verifier, position bias, failed share) when stored."""
    _print_rounds(db, run_name, as_json)


@db_app.command("rounds")
def db_rounds(db: DbOption = None, run: RunOption = None, as_json: JsonOption = False) -> None:
    """Each run's rounds: status, responses, pairs, the evaluation in the run's metric, wall
    time, and the judge's meta-evaluation when stored (the table of `selfplay status`)."""
    _print_rounds(db, run, as_json)


# Judge meta-evaluation figures shown in the rounds table when a run has them.
_JUDGE_EVAL_COLUMNS = {
    "verifier_agreement": "judge agrees",
    "position_bias_rate": "position bias",
    "judge_failed_rate": "judge failed",
}


def _print_rounds(db: str | None, run: str | None, as_json: bool) -> None:
    """The rounds of the run named `run` (default: every run): a table per run, or JSON."""
    from db.queries import get_checkpoint
    from db.runs import INITIAL_ROUND_INDEX, checkpoint_figures, evaluation_kind, select_runs
    from db.summaries import round_summaries

    tables = []
    with store_session(db) as s:
        for r in select_runs(s, run):
            summaries = round_summaries(s, r.id)
            if as_json:
                tables.append((r.name, summaries, None))
                continue
            initial = get_checkpoint(s, r.id, INITIAL_ROUND_INDEX)
            figures = {} if initial is None else checkpoint_figures(s, initial)
            kind = evaluation_kind(s, r.id)
            tables.append((r.name, summaries, _InitialRow(initial, figures, kind)))
    if as_json:
        _print_json([st.to_dict() for _, summaries, _ in tables for st in summaries])
        return
    for name, summaries, initial in tables:
        out.print(_rounds_table(name, summaries, initial))


@dataclass(frozen=True)
class _InitialRow:
    """A run's initial policy as the rounds table shows it: its checkpoint (None before it is
    made), its evaluation figures (`db.runs.checkpoint_figures`) and the run's evaluation kind
    (`db.runs.evaluation_kind`), which picks the table's evaluation columns."""

    ckpt: Checkpoint | None
    figures: dict[str, float | None]
    kind: str


def _pm(value: float | None, se: float | None) -> str:
    """A figure with its standard error: "0.640 ± 0.048" ("0.500" without one)."""
    if value is None:
        return ""
    return f"{value:.3f}" + ("" if se is None else f" ± {se:.3f}")


def _evaluation_columns(
    kind: str, summaries: list[RoundSummary], initial: dict[str, float | None]
) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """The rounds table's evaluation columns for a run evaluated by `kind`, each a header and
    a function of a figures dict (a round's RoundSummary.to_dict(), or the initial policy's):
    held-out accuracy always for accuracy runs and beside the others when some is stored."""
    accuracy = ("held-out acc", lambda f: format_accuracy(f.get("heldout_accuracy")))
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = []
    if kind == "win_rate":
        columns += [
            ("win rate ± SE", lambda f: _pm(f.get("win_rate"), f.get("win_rate_se"))),
            ("LC win rate", lambda f: _fmt(f.get("win_rate_lc"))),
        ]
    elif kind == "judge_score":
        columns.append(
            ("judge score ± SE", lambda f: _pm(f.get("judge_score"), f.get("judge_score_se")))
        )
    has_accuracy = initial.get("heldout_accuracy") is not None or any(
        st.heldout_accuracy is not None for st in summaries
    )
    if kind == "accuracy" or has_accuracy:
        columns.append(accuracy)
    return columns


def _rounds_table(run_name: str, summaries: list[RoundSummary], initial: _InitialRow) -> Table:
    """One run's rounds, after its initial policy (the round -1 checkpoint, if any)."""
    from db.models import EXTERNAL_CHECKPOINT_PREFIX

    shown = [f for f in _JUDGE_EVAL_COLUMNS if any(getattr(st, f) is not None for st in summaries)]
    evaluation = _evaluation_columns(initial.kind, summaries, initial.figures)
    # Shown when some round has them: the truncated share, and why a round has no pairs.
    extra: list[tuple[str, Callable[[RoundSummary], str]]] = []
    if any(st.truncated_responses for st in summaries):
        extra.append(("truncated", lambda st: _share(st.truncated_responses, st.truncated_share)))
    if any(st.no_pairs_reason for st in summaries):
        extra.append(("why no pairs", _why_no_pairs))
    table = Table(title=f"run {run_name}")
    columns = ("round", "stage", "responses", "pairs", *(n for n, _ in evaluation), "wall time")
    unwrapped = {n for n, _ in evaluation}  # "0.640 ± 0.048" reads badly on two lines
    for col in (*columns, *(_JUDGE_EVAL_COLUMNS[f] for f in shown), *(n for n, _ in extra)):
        justify = "left" if col in ("stage", "why no pairs") else "right"
        table.add_column(col, justify=justify, no_wrap=col in unwrapped)
    if initial.ckpt is not None:
        external = initial.ckpt.path.startswith(EXTERNAL_CHECKPOINT_PREFIX)
        table.add_row(
            "initial",
            "external" if external else "sft",
            "",
            "",
            *(get(initial.figures) for _, get in evaluation),
            "",
            *[""] * (len(shown) + len(extra)),
        )
    for st in summaries:
        stage = st.status + (f": {st.error.splitlines()[0]}" if st.error else "")
        figures = st.to_dict()
        table.add_row(
            str(st.index),
            stage,
            str(st.responses),
            str(st.pairs),
            *(get(figures) for _, get in evaluation),
            f"{st.wall_time_s:.1f}s",
            *(_fmt(getattr(st, f)) for f in shown),
            *(get(st) for _, get in extra),
        )
    return table


@db_app.command("summarize")
def db_summarize(db: DbOption = None, run: RunOption = None) -> None:
    """Store the summary of every done round that has none (rounds finished before summaries)."""
    from db.runs import select_runs
    from db.summaries import unsummarized_rounds, write_round_summary

    with store_session(db) as s:
        for r in select_runs(s, run):
            rounds = unsummarized_rounds(s, r.id)
            for rnd in rounds:
                start = time.perf_counter()
                write_round_summary(s, rnd)
                s.commit()  # one round at a time: an interrupted backfill keeps what it did
                out.print(
                    f"run {r.name} round {rnd.index}: summarized "
                    f"({time.perf_counter() - start:.1f}s)",
                    highlight=False,
                )
            if not rounds:
                out.print(f"run {r.name}: every done round has its summary", highlight=False)


@db_app.command("pairs")
def db_pairs(
    db: DbOption = None,
    run: RunOption = None,
    round_: RoundOption = None,
    judge: JudgeOption = None,
    min_margin: MarginOption = None,
    search: SearchOption = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many pairs (≤ 500).")] = 20,
    after: Annotated[
        int,
        typer.Option(
            "--after", min=0, max=MAX_ID, help="Start after this pair id (keyset pagination)."
        ),
    ] = 0,
    as_json: JsonOption = False,
) -> None:
    """Pairs matching the filters, in id order; `--after LAST_ID` gives the next page."""
    from db.pairs import list_pairs

    f = _filter(run, round_, judge, min_margin, search)
    with store_session(db) as s:
        rows = list_pairs(s, f, after=after, limit=limit)
    if as_json:
        _print_json([r.to_dict() for r in rows])
        return
    table = Table(title=f"{len(rows)} pairs" + (f" after id {after}" if after else ""))
    for c in ("id", "run", "round", "prompt", "chosen", "score", "rejected", "score ", "margin"):
        table.add_column(
            c, justify="right" if c.strip() in ("id", "round", "score", "margin") else "left"
        )
    for r in rows:
        table.add_row(
            str(r.id),
            r.run,
            str(r.round),
            _clip(r.prompt),
            _clip(r.chosen),
            _fmt(r.chosen_score, 2),
            _clip(r.rejected),
            _fmt(r.rejected_score, 2),
            _fmt(r.margin, 2),
        )
    out.print(table, highlight=False)
    if rows and len(rows) == limit:
        out.print(f"next page: --after {rows[-1].id}", highlight=False)


def _clip(text: str, n: int = 40) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= n else text[: n - 1] + "…"


@db_app.command("show")
def db_show(
    pair_id: Annotated[int, typer.Argument(min=1, max=MAX_ID, help="Pair id.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """A pair: prompt, both responses, all their judgments (critiques, traces), the checkpoint."""
    from db.pairs import pair_detail

    with store_session(db) as s:
        detail = pair_detail(s, pair_id)
    if as_json:
        _print_json(detail.to_dict())
        return
    p = detail.pair
    out.print(
        f"[bold]pair {p.id}[/]  run {p.run}  round {p.round}  margin {p.margin:.3f}  "
        f"builder {p.builder}  weight {detail.weight}",
        highlight=False,
    )
    if p.prompt_messages is None:
        out.print(f"[bold]prompt[/] ({p.prompt_id}): {escape(p.prompt)}", highlight=False)
    else:
        out.print(f"[bold]prompt[/] ({p.prompt_id}), a conversation:", highlight=False)
        for m in p.prompt_messages:
            out.print(f"  [bold]{m['role']}[/]: {escape(m['content'])}", highlight=False)
    if detail.answer is not None:
        out.print(f"[bold]reference answer[/]: {escape(detail.answer)}", highlight=False)
    for label, resp in (("chosen", detail.chosen), ("rejected", detail.rejected)):
        table = Table(title=f"{label}: response {resp.id}", show_header=False, title_justify="left")
        table.add_column("field")
        table.add_column("value", overflow="fold")
        table.add_row("text", escape(resp.text))
        table.add_row("tokens", f"{resp.num_tokens} (finish: {resp.finish_reason})")
        table.add_row("log-prob", f"{resp.logprob:.3f}")
        table.add_row(
            "checkpoint",
            f"{resp.checkpoint_id} (round {resp.checkpoint_round}) {resp.checkpoint_path}",
        )
        for j in resp.judgments:
            body = f"{j.status} score={_fmt(j.score)}"
            if j.critique:
                body += f"\ncritique: {j.critique}"
            if j.trace:
                body += f"\ntrace: {json.dumps(j.trace)}"
            if j.error:
                body += f"\nerror: {j.error}"
            table.add_row(f"judge {j.judge}#{j.repeat}", body)
        out.print(table, highlight=False)


@db_app.command("export")
def db_export(
    path: Annotated[Path, typer.Argument(help="Output file (jsonl, parquet) or directory (hf).")],
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl | parquet | hf (a datasets directory).")
    ] = "jsonl",
    db: DbOption = None,
    run: RunOption = None,
    round_: RoundOption = None,
    judge: JudgeOption = None,
    min_margin: MarginOption = None,
    search: SearchOption = None,
) -> None:
    """Export pairs as prompt/chosen/rejected (TRL DPOTrainer's format) with scores and ids."""
    from selfplay.export import FORMATS, export_pairs

    if fmt not in FORMATS:
        raise fail(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}", 1)
    f = _filter(run, round_, judge, min_margin, search)
    try:
        with store_session(db) as s:
            n = export_pairs(s, f, fmt, path)
    except ImportError as e:
        raise fail(f"{fmt} export needs {e.name}: pip install 'selfplay[inspect]'", 1) from None
    out.print(f"exported {n} pairs to {path} ({fmt})", highlight=False)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard(
    db: DbOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="SELFPLAY_DASHBOARD_TOKEN",
            help="Access token (required to bind a non-loopback address); "
            "open /?token=… once, a cookie keeps it.",
        ),
    ] = None,
) -> None:
    """Serve the read-only web dashboard of a store (runs, rounds with plots, pairs)."""
    if not _is_loopback(host) and not token:
        raise fail(f"--host {host} is not a loopback address: set --token to bind it", 2)
    try:
        import uvicorn

        from selfplay.dashboard import create_app
    except ImportError as e:
        raise fail(f"the dashboard needs {e.name}: pip install 'selfplay[inspect]'", 1) from None
    url = db_url(db)
    with store_session(db):
        pass  # fail early, with a clear message, when there is no store
    out.print(f"dashboard of {mask_url(url)} on http://{host}:{port}/", highlight=False)
    uvicorn.run(create_app(url, token=token), host=host, port=port, log_level="warning")
