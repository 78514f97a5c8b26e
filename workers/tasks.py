"""Thin Celery tasks: each takes ids, finds its run's context and calls one stage function.

The logic lives in `selfplay.stages` (the same functions the embedded driver calls). A worker
builds only the engines its tasks use (`Engines` is lazy): a `generate` worker never builds the
judge, a `train` worker neither the judge nor a generation engine. A task adds
only what a queue needs: retries with backoff, routing by name, and its wall time stored in the
metrics table (stage `task_<name>`, step = block or chunk index, name `seconds`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from celery import Celery, Task

from db import queries
from db.engine import make_engine, session_factory, transaction
from db.models import Metric, Round, Run
from selfplay.config import ExecutorConfig, SelfplayConfig
from selfplay.progress import SilentReporter
from selfplay.redact import mask_url
from selfplay.stages import Context
from selfplay.stages.evaluate import evaluate_round
from selfplay.stages.generate import generate_block
from selfplay.stages.judge import judge_response_ids
from selfplay.stages.train import train_round

T = TypeVar("T")

# One context per (store, run) in each worker process: its generation engine stays loaded
# between tasks and reloads weights only when a task's round names another checkpoint.
_contexts: dict[tuple[str, int], Context] = {}


def worker_context(db_url: str, run_id: int) -> Context:
    """The run's context on this worker, built on first use from the config stored on the run."""
    key = (db_url, run_id)
    if key not in _contexts:
        sessions = session_factory(make_engine(db_url))
        with sessions() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise LookupError(f"run id {run_id} does not exist in {mask_url(db_url)}")
            cfg = SelfplayConfig.model_validate(run.config)
        _contexts[key] = Context(cfg, sessions, run_id, SilentReporter())
    return _contexts[key]


def _timed(ctx: Context, round_id: int, name: str, step: int, work: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    with transaction(ctx.sessions) as s:
        round_index = s.get(Round, round_id).index
        row = dict(
            run_id=ctx.run_id,
            round_index=round_index,
            stage=f"task_{name}",
            step=step,
            name="seconds",
            value=seconds,
        )
        queries.insert_ignore(s, Metric, [row])
    return result


def _context(task: Task, run_id: int) -> Context:
    db_url = task.app.conf.selfplay_db_url
    if db_url is None:
        raise RuntimeError("this Celery app was built without a store URL: it cannot run tasks")
    return worker_context(db_url, run_id)


def generate(task: Task, run_id: int, round_id: int, block: int, source: str = "policy") -> None:
    """Generate one block of one sample source (see `generate_block`)."""
    ctx = _context(task, run_id)
    name = "generate" if source == "policy" else f"generate_{source}"
    _timed(ctx, round_id, name, block, lambda: generate_block(ctx, round_id, block, source))


def judge(
    task: Task, run_id: int, round_id: int, chunk: int, response_ids: list[int], repeat: int = 0
) -> int:
    """Judge one chunk of the round's responses (one repeat); returns how many were judged now."""
    ctx = _context(task, run_id)
    return _timed(
        ctx,
        round_id,
        "judge",
        chunk,
        lambda: judge_response_ids(ctx, round_id, response_ids, repeat),
    )


def train(task: Task, run_id: int, round_id: int) -> None:
    """Train the round's policy (see `train_round`; a finished round returns at once)."""
    ctx = _context(task, run_id)
    _timed(ctx, round_id, "train", 0, lambda: train_round(ctx, round_id))


def evaluate(task: Task, run_id: int, round_id: int) -> None:
    """Evaluate the round's new checkpoint on the held-out set (see `evaluate_round`)."""
    ctx = _context(task, run_id)
    _timed(ctx, round_id, "evaluate", 0, lambda: evaluate_round(ctx, round_id))


def ping(task: Task) -> str:
    """An empty task: a liveness check and the measure of dispatch overhead."""
    return "pong"


def register_tasks(app: Celery, cfg: ExecutorConfig) -> None:
    """Register the tasks on `app` under stable names (`selfplay.<name>`), with bounded retries."""
    options = dict(
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        autoretry_for=(Exception,),
        max_retries=cfg.max_retries,
        retry_backoff=True,
        retry_backoff_max=cfg.retry_backoff_max_s,
        retry_jitter=True,
    )
    for fn in (generate, judge, train, evaluate, ping):
        app.task(name=f"selfplay.{fn.__name__}", **options)(fn)
