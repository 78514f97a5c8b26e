"""The `selfplay` command line: subcommands map one-to-one to library functions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from selfplay.config import ConfigError, SelfplayConfig, load_config
from selfplay.progress import RichReporter, format_accuracy
from selfplay.redact import mask_text, mask_url

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Manage and inspect the preference store.")
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)

DEFAULT_DB = SelfplayConfig().db_url

DbOption = Annotated[
    str | None,
    typer.Option("--db", help=f"Store URL (default: $SELFPLAY_DB_URL or {DEFAULT_DB})."),
]


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _config_or_exit(path: Path) -> SelfplayConfig:
    try:
        return load_config(path)
    except ConfigError as e:
        raise _fail(str(e), 2) from None


def _db_url(db: str | None) -> str:
    return db or os.environ.get("SELFPLAY_DB_URL") or DEFAULT_DB


def _first_line(e: BaseException) -> str:
    """`Type: message`, its first line only (SQLAlchemy appends a background link)."""
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0] if text else ''}"


def open_store(db: str | None) -> Engine:
    """The engine of a current selfplay store, or a clean exit: 2 for a URL that names no
    database selfplay can open (`--db`), 1 for a store that is unreachable, absent or behind
    this selfplay's schema. Messages carry the URL with its password masked."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import ArgumentError, OperationalError

    from db.engine import make_engine
    from db.migrate import check_current

    url = _db_url(db)
    shown = mask_url(url)
    try:
        engine = make_engine(url)
    except (ArgumentError, ImportError) as e:
        raise _fail(
            mask_text(f"--db: cannot open store {shown}: {_first_line(e)}", url), 2
        ) from None
    try:
        has_store = inspect(engine).has_table("runs")
    except OperationalError as e:
        engine.dispose()
        raise _fail(mask_text(f"cannot open store {shown}: {_first_line(e)}", url), 1) from None
    if not has_store:
        engine.dispose()
        raise _fail(f"no selfplay store at {shown} (run `selfplay run` first)", 1)
    try:
        check_current(engine, shown)
    except RuntimeError as e:
        engine.dispose()
        raise _fail(str(e), 1) from None
    return engine


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    rounds: Annotated[
        int | None, typer.Option("--rounds", min=1, help="Rounds to run (default: run.rounds).")
    ] = None,
) -> None:
    """Run (or resume) the self-improvement loop of a config."""
    from selfplay.driver import run_loop

    cfg = _config_or_exit(config)
    _quiet_transformers()
    err.print(f"run [bold]{cfg.run.name}[/]: store {mask_url(cfg.db_url)}", highlight=False)
    try:
        summaries = run_loop(cfg, rounds=rounds, reporter=RichReporter(out))
    except ConfigError as e:
        raise _fail(str(e), 2) from None
    final = summaries[-1] if summaries else None
    if final is not None and final.heldout_accuracy is not None:
        out.print(
            f"done: {len(summaries)} rounds, final held-out accuracy {final.heldout_accuracy:.3f}"
        )


# Judge meta-evaluation figures (stage `judge_eval`) shown by `status` when a run has them.
_JUDGE_EVAL_COLUMNS = {
    "verifier_agreement": "judge agrees",
    "position_bias_rate": "position bias",
    "failed_rate": "judge failed",
}


@app.command()
def status(
    db: DbOption = None,
    run_name: Annotated[str | None, typer.Option("--run", help="Run name (default: all).")] = None,
) -> None:
    """Print each run's rounds: stage, pairs, held-out accuracy, wall time, and the judge's
    meta-evaluation (agreement with the verifier, position bias, failed share) when stored."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from db import queries
    from db.inspect import stage_metrics
    from db.models import EXTERNAL_CHECKPOINT_PREFIX, Run

    engine = open_store(db)
    with engine.connect() as conn, Session(bind=conn) as s:
        runs = list(s.scalars(select(Run).order_by(Run.id)))
        if run_name is not None:
            runs = [r for r in runs if r.name == run_name]
            if not runs:
                raise _fail(f"no run named {run_name!r} in {mask_url(_db_url(db))}", 1)
        for r in runs:
            judge_eval = stage_metrics(s, r.id, "judge_eval")
            shown = [m for m in _JUDGE_EVAL_COLUMNS if any(m in v for v in judge_eval.values())]
            table = Table(title=f"run {r.name}")
            columns = ("round", "stage", "responses", "pairs", "held-out acc", "wall time")
            for col in (*columns, *(_JUDGE_EVAL_COLUMNS[m] for m in shown)):
                table.add_column(col, justify="right" if col != "stage" else "left")
            initial = queries.get_checkpoint(s, r.id, -1)
            if initial is not None:
                acc = initial.heldout_accuracy
                external = initial.path.startswith(EXTERNAL_CHECKPOINT_PREFIX)
                stage = "external" if external else "sft"
                table.add_row(
                    "initial", stage, "", "", format_accuracy(acc), "", *[""] * len(shown)
                )
            for row in queries.round_summaries(s, r.id):
                stage = row.status + (f": {row.error.splitlines()[0]}" if row.error else "")
                evals = judge_eval.get(row.index, {})
                table.add_row(
                    str(row.index),
                    stage,
                    str(row.responses),
                    str(row.pairs),
                    format_accuracy(row.heldout_accuracy),
                    f"{row.wall_time_s:.1f}s",
                    *(f"{evals[m]:.3f}" if m in evals else "" for m in shown),
                )
            out.print(table)
    engine.dispose()


@app.command()
def judge(
    config: Annotated[Path, typer.Argument(help="YAML config (its judge, store and pairing).")],
    data: Annotated[
        Path,
        typer.Argument(
            help='JSONL: {"prompt": ..., "response": ...} or {"prompt": ..., "responses": [...]} '
            'a line, "answer" optional.'
        ),
    ],
    run_name: Annotated[
        str | None, typer.Option("--run", help="Run to store them under (default: run.name).")
    ] = None,
    pairs: Annotated[
        bool, typer.Option("--pairs", help="Also build pairs with the configured builder.")
    ] = False,
) -> None:
    """Label a JSONL of prompts and responses with the config's judge, into the store
    (resumable: run it again and it judges only what is missing)."""
    from selfplay.labeling import LabelDataError, label_file
    from selfplay.tasks import TaskDataError

    cfg = _config_or_exit(config)
    if run_name is not None:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": run_name})})
    _quiet_transformers()
    err.print(f"run [bold]{cfg.run.name}[/]: store {mask_url(cfg.db_url)}", highlight=False)
    try:
        result = label_file(cfg, data, pairs=pairs, reporter=RichReporter(out))
    except ConfigError as e:
        raise _fail(str(e), 2) from None
    except (LabelDataError, TaskDataError) as e:
        raise _fail(str(e), 1) from None
    out.print(
        f"{result.prompts} prompts, {result.responses} responses ({result.stored_now} new); "
        f"judged {result.judged_now} now, {result.failed} failed in all"
        + (f"; {result.pairs} pairs" if pairs else ""),
        highlight=False,
    )


@app.command()
def worker(
    config: Annotated[Path, typer.Argument(help="YAML config (executor and store sections).")],
    queues: Annotated[
        str, typer.Option("--queues", help="Comma-separated: generate, judge, train.")
    ] = "generate,judge,train",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Processes.")] = 1,
) -> None:
    """Start a Celery worker that runs the loop's tasks from these queues."""
    try:
        from workers.worker import parse_queues, start_worker

        _quiet_transformers()
        start_worker(load_config(config), parse_queues(queues), concurrency)
    except ConfigError as e:
        raise _fail(str(e), 2) from None
    except ImportError as e:
        hint = "install the distributed extra: pip install 'selfplay[distributed]'"
        raise _fail(f"{e}; {hint}", 2) from None


def _quiet_transformers() -> None:
    """Our own progress bars are enough: hide transformers' per-load and per-save bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Create or migrate the store's schema to the latest revision."""
    from db.engine import make_engine
    from db.migrate import current_revision, upgrade

    engine = make_engine(_db_url(db))
    upgrade(engine)
    out.print(f"store {mask_url(_db_url(db))} at revision {current_revision(engine)}")
    engine.dispose()


# Registers `db stats|rounds|pairs|show|export` and `dashboard` on the apps above.
import selfplay.cli_db  # noqa: E402, F401
