"""The loop driver: prepare the initial policy, then run each round's stages as a state machine.

Reads top to bottom like a recipe. The round's `status` column is the state; every stage
computes its own missing work, so running the driver again after a crash at any point
continues where it stopped.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
import traceback
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.engine import make_engine, session_factory, transaction
from db.migrate import upgrade
from db.models import EXTERNAL_CHECKPOINT_PREFIX, Checkpoint, Round, RoundStatus, Run
from selfplay.config import ConfigError, ExecutorConfig, SelfplayConfig
from selfplay.executor import Executor, make_executor
from selfplay.progress import Reporter, SilentReporter, format_accuracy
from selfplay.redact import mask_config
from selfplay.sft import prepare_policy
from selfplay.stages import Context, evaluate_checkpoint, make_context

# Fields that may change between invocations of the same run without changing its data.
_RESUMABLE_FIELDS = {("run", "rounds"), ("store", "url"), ("model", "cache_dir")} | {
    ("executor", key) for key in ExecutorConfig.model_fields
}


def _comparable(config: dict) -> dict:
    flat = {}
    for section, values in config.items():
        items = values.items() if isinstance(values, dict) else [("", values)]
        for key, value in items:
            if (section, key) not in _RESUMABLE_FIELDS:
                flat[(section, key)] = value
    return flat


def ensure_run(sessions: sessionmaker[Session], cfg: SelfplayConfig) -> int:
    """Create the run row, or check that an existing one was started with the same config.
    The stored config has its store and broker passwords masked (they are resumable fields,
    so a resume compares equal whatever they were)."""
    resolved = mask_config(cfg.model_dump(mode="json"))
    with transaction(sessions) as s:
        queries.insert_ignore(s, Run, [dict(name=cfg.run.name, config=resolved)])
        run = queries.get_run(s, cfg.run.name)
        stored, wanted = _comparable(run.config), _comparable(resolved)
        # A key the stored config lacks was added by a newer selfplay: its default applies.
        changed = sorted(k for k in stored if stored[k] != wanted.get(k))
        if changed:
            fields = ", ".join(".".join(k) for k in changed)
            raise ConfigError(
                f"run {cfg.run.name!r} already exists in the store with a different config "
                f"({fields}); resume it with its original config or choose a new run.name"
            )
        return run.id


def ensure_initial_checkpoint(ctx: Context) -> int:
    """Build (or reuse) the round-0 policy and record it as checkpoint -1."""
    cfg = ctx.cfg
    with ctx.sessions() as s:
        existing = queries.get_checkpoint(s, ctx.run_id, -1)
    if existing is not None and existing.path.startswith(EXTERNAL_CHECKPOINT_PREFIX):
        raise ConfigError(
            f"run {cfg.run.name!r} holds responses labelled by `selfplay judge` "
            f"({existing.path}), not a loop: choose another run.name"
        )
    with ctx.reporter.bar("SFT of the initial policy", cfg.model.sft.steps) as advance:
        path = prepare_policy(
            cfg.model, ctx.task, cfg.run.seed, progress=lambda step, total, loss: advance(1)
        )
    with transaction(ctx.sessions) as s:
        queries.insert_ignore(
            s, Checkpoint, [dict(run_id=ctx.run_id, round_index=-1, path=str(path))]
        )
        return queries.get_checkpoint(s, ctx.run_id, -1).id


def next_policy(ctx: Context, index: int) -> Checkpoint | None:
    """The checkpoint round `index` starts from: the previous round's output, or, after
    guards.patience rounds without a new best held-out accuracy, the best checkpoint
    (on_plateau: rollback) or None (on_plateau: stop)."""
    guards = ctx.cfg.guards
    with ctx.sessions() as s:
        previous = queries.get_checkpoint(s, ctx.run_id, index - 1)
        if previous is None:
            raise RuntimeError(f"round {index} cannot start: round {index - 1} has no checkpoint")
        if guards.patience is None:
            return previous
        best = queries.best_checkpoint(s, ctx.run_id, before=index)
        if best is None or (index - 1) - best.round_index < guards.patience:
            return previous
        if guards.on_plateau == "stop":
            return None
        return best


def ensure_round(ctx: Context, index: int) -> int | None:
    """Create round `index` (once) from `next_policy`; None when the plateau rule stops the run."""
    with ctx.sessions() as s:
        existing = queries.get_round(s, ctx.run_id, index)
        if existing is not None:
            return existing.id
    policy = next_policy(ctx, index)
    if policy is None:
        return None
    with transaction(ctx.sessions) as s:
        queries.insert_ignore(
            s, Round, [dict(run_id=ctx.run_id, index=index, policy_checkpoint_id=policy.id)]
        )
        return queries.get_round(s, ctx.run_id, index).id


def prune_checkpoints(ctx: Context) -> list[str]:
    """guards.keep_last: delete checkpoint directories other than the SFT model's, the best
    one, the last N rounds' and any an unfinished round still needs; returns deleted paths.
    The rows stay (their metrics and accuracies remain queryable)."""
    keep_last = ctx.cfg.guards.keep_last
    if keep_last is None:
        return []
    with ctx.sessions() as s:
        ckpts = s.scalars(
            select(Checkpoint)
            .where(Checkpoint.run_id == ctx.run_id, Checkpoint.round_index >= 0)
            .order_by(Checkpoint.round_index)
        ).all()
        best = queries.best_checkpoint(s, ctx.run_id)
        needed = set(
            s.scalars(
                select(Round.policy_checkpoint_id).where(
                    Round.run_id == ctx.run_id, Round.status != RoundStatus.DONE
                )
            )
        )
        keep = {c.id for c in ckpts[-keep_last:]} | needed | ({best.id} if best else set())
        doomed = [c.path for c in ckpts if c.id not in keep]
    deleted = []
    for path in doomed:
        if Path(path).exists():
            shutil.rmtree(path)
            deleted.append(path)
    return deleted


def _set_status(ctx: Context, round_id: int, status: str, error: str | None = None) -> None:
    with transaction(ctx.sessions) as s:
        rnd = s.get(Round, round_id)
        rnd.status, rnd.error = status, error
        if status == RoundStatus.DONE:
            rnd.finished_at = dt.datetime.now(dt.UTC)
            # A done round's rows never change again: store its aggregates in the same
            # transaction, so that the dashboard and `db stats` read one row instead of them.
            queries.write_round_summary(s, rnd)


def _add_wall_time(ctx: Context, round_id: int, seconds: float) -> None:
    with transaction(ctx.sessions) as s:
        s.get(Round, round_id).wall_time_s += seconds


def run_round(ctx: Context, round_id: int, executor: Executor) -> None:
    """Run a round's remaining stages in order; a failure is stored on the round and re-raised."""
    with ctx.sessions() as s:
        status = s.get(Round, round_id).status
    # A failed round re-enters at the first stage: finished stages find no missing work.
    first = (
        1
        if status in (RoundStatus.PENDING, RoundStatus.FAILED)
        else RoundStatus.ORDER.index(status)
    )
    for stage in RoundStatus.ORDER[first:-1]:
        _set_status(ctx, round_id, stage)
        start = time.perf_counter()
        try:
            executor.run_stage(ctx, stage, round_id)
        except BaseException as err:
            detail = "".join(traceback.format_exception(err))
            _add_wall_time(ctx, round_id, time.perf_counter() - start)
            _set_status(ctx, round_id, RoundStatus.FAILED, f"{stage}: {detail}")
            raise
        _add_wall_time(ctx, round_id, time.perf_counter() - start)
    _set_status(ctx, round_id, RoundStatus.DONE)


def run_loop(
    cfg: SelfplayConfig, rounds: int | None = None, reporter: Reporter | None = None
) -> list[queries.RoundSummary]:
    """Run (or resume) the configured loop for `rounds` rounds (default: cfg.run.rounds)."""
    reporter = reporter or SilentReporter()
    engine = make_engine(cfg.db_url)
    upgrade(engine)
    sessions = session_factory(engine)
    ctx = make_context(cfg, sessions, ensure_run(sessions, cfg), reporter)
    try:
        executor = make_executor(cfg.executor)
        initial = ensure_initial_checkpoint(ctx)
        accuracy = evaluate_checkpoint(ctx, initial, -1)
        reporter.line(f"initial policy: held-out accuracy {format_accuracy(accuracy)}")
        for index in range(rounds or cfg.run.rounds):
            round_id = ensure_round(ctx, index)
            if round_id is None:
                reporter.line(
                    f"stopping before round {index}: no new best held-out accuracy for "
                    f"{cfg.guards.patience} rounds (guards.on_plateau: stop)"
                )
                break
            with sessions() as s:
                already_done = s.get(Round, round_id).status == RoundStatus.DONE
            if not already_done:
                run_round(ctx, round_id, executor)
            with sessions() as s:
                (summary,) = queries.round_summaries(s, ctx.run_id, index)
            reporter.line(
                f"round {index}: {summary.pairs} pairs, held-out accuracy "
                f"{format_accuracy(summary.heldout_accuracy)}, {summary.wall_time_s:.1f}s"
                + (" (already done)" if already_done else "")
            )
            for path in prune_checkpoints(ctx):
                reporter.line(f"  deleted checkpoint {path} (guards.keep_last)")
        with sessions() as s:
            best = queries.best_checkpoint(s, ctx.run_id)
            if best is not None:
                reporter.line(
                    f"best checkpoint: {'SFT' if best.round_index < 0 else f'round {best.round_index}'}"
                    f" (held-out accuracy {format_accuracy(best.heldout_accuracy)}) {best.path}"
                )
        with sessions() as s:
            summaries = queries.round_summaries(s, ctx.run_id)
    finally:
        ctx.close()
        engine.dispose()
    return summaries
