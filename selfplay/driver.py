"""The loop driver: prepare the initial policy, then run each round's stages as a state machine.

Reads top to bottom like a recipe. The round's `status` column is the state; every stage
computes its own missing work, so running the driver again after a crash at any point
continues where it stopped.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import traceback
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db import queries, summaries
from db.engine import make_engine, session_factory, sqlite_path, transaction
from db.migrate import upgrade
from db.models import EXTERNAL_CHECKPOINT_PREFIX, Checkpoint, Round, RoundStatus, Run
from db.runs import checkpoint_figures
from selfplay.checkpoints import SFT_ROUND_INDEX, prune_checkpoints
from selfplay.config import ConfigError, ExecutorConfig, LoggingConfig, SelfplayConfig
from selfplay.executor import Executor, make_executor
from selfplay.model_source import check_model_sources
from selfplay.progress import Reporter, SilentReporter, format_evaluation
from selfplay.redact import mask_config
from selfplay.rendering import check_conversations
from selfplay.sft import check_sft_data, prepare_policy
from selfplay.stages import Context, Engines
from selfplay.stages.evaluate import (
    METRIC_NAMES,
    check_evaluation,
    evaluate_checkpoint,
    resolve_metric,
)
from selfplay.tasks import TaskDataError, make_task
from selfplay.trackers import Trackers
from selfplay.training.distributed import gpu_shortfall

# Fields that may change between invocations of the same run without changing its data.
_RESUMABLE_FIELDS = (
    {("run", "rounds"), ("store", "url"), ("model", "cache_dir")}
    | {("executor", key) for key in ExecutorConfig.model_fields}
    | {("logging", key) for key in LoggingConfig.model_fields}
)


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
        existing = queries.get_checkpoint(s, ctx.run_id, SFT_ROUND_INDEX)
    if existing is not None and existing.path.startswith(EXTERNAL_CHECKPOINT_PREFIX):
        raise ConfigError(
            f"run {cfg.run.name!r} holds responses labelled by `selfplay judge` "
            f"({existing.path}), not a loop: choose another run.name"
        )
    with ctx.reporter.bar("SFT of the initial policy", cfg.model.sft.steps) as advance:
        path = prepare_policy(
            cfg.model, ctx.engines.task, cfg.run.seed, progress=lambda step, total, loss: advance(1)
        )
    with transaction(ctx.sessions) as s:
        row = dict(run_id=ctx.run_id, round_index=SFT_ROUND_INDEX, path=str(path))
        queries.insert_ignore(s, Checkpoint, [row])
        return queries.get_checkpoint(s, ctx.run_id, SFT_ROUND_INDEX).id


def next_policy(ctx: Context, index: int) -> Checkpoint | None:
    """The checkpoint round `index` starts from: the previous round's output, or, after
    guards.patience rounds without a new best value of the evaluation metric (held-out
    accuracy, win rate, judge score), the best checkpoint (on_plateau: rollback) or None
    (on_plateau: stop)."""
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


def _set_status(ctx: Context, round_id: int, status: str, error: str | None = None) -> None:
    with transaction(ctx.sessions) as s:
        rnd = s.get(Round, round_id)
        rnd.status, rnd.error = status, error
        if status == RoundStatus.DONE:
            rnd.finished_at = dt.datetime.now(dt.UTC)
            # A done round's rows never change again: store its aggregates in the same
            # transaction, so that the dashboard and `db stats` read one row instead of them.
            summaries.write_round_summary(s, rnd)


def _add_wall_time(ctx: Context, round_id: int, seconds: float) -> None:
    with transaction(ctx.sessions) as s:
        s.get(Round, round_id).wall_time_s += seconds


def round_recipe(cfg: SelfplayConfig) -> list[tuple[str, str]]:
    """A round's steps in order (names in `selfplay.stages.STEPS`), each with the round
    status it runs under."""
    steps = [
        (RoundStatus.GENERATING, "prompts"),
        (RoundStatus.GENERATING, "generate"),
        (RoundStatus.JUDGING, "judge"),
    ]
    if cfg.revise.enabled:
        # The policy rewrites critiqued responses; the judge stage then judges the revisions.
        steps += [(RoundStatus.REVISING, "revise"), (RoundStatus.REVISING, "judge")]
    if cfg.judge.meta_eval_prompts:
        steps.append((RoundStatus.PAIRING, "judge_eval"))
    steps += [
        (RoundStatus.PAIRING, "pair"),
        (RoundStatus.TRAINING, "train"),
        (RoundStatus.EVALUATING, "evaluate"),
    ]
    return steps


def run_round(ctx: Context, round_id: int, executor: Executor) -> None:
    """Run a round's remaining steps in order; a failure is stored on the round and re-raised."""
    with ctx.sessions() as s:
        status = s.get(Round, round_id).status
    # A failed round re-enters at the first step: finished steps find no missing work.
    resume = status not in (RoundStatus.PENDING, RoundStatus.FAILED)
    first = RoundStatus.ORDER.index(status) if resume else 0
    current = None
    for stage, step in round_recipe(ctx.cfg):
        if RoundStatus.ORDER.index(stage) < first:
            continue
        if stage != current:
            _set_status(ctx, round_id, stage)
            current = stage
        start = time.perf_counter()
        try:
            executor.run_step(ctx, step, round_id)
        except BaseException as err:
            detail = "".join(traceback.format_exception(err))
            _add_wall_time(ctx, round_id, time.perf_counter() - start)
            _set_status(ctx, round_id, RoundStatus.FAILED, f"{stage}: {detail}")
            raise
        _add_wall_time(ctx, round_id, time.perf_counter() - start)
    _set_status(ctx, round_id, RoundStatus.DONE)


def round_line(summary: summaries.RoundSummary, metric: str | None = None) -> str:
    """The line printed when a round finishes: its pairs (or why it has none), the share of
    truncated responses when any, its evaluation in the run's metric (`format_evaluation`;
    held-out accuracy by default) and wall time."""
    pairs = summary.no_pairs_reason or f"{summary.pairs} pairs"
    cut = summary.truncated_responses
    truncated = f" ({cut} of {summary.responses} responses truncated)" if cut else ""
    evaluation = format_evaluation(metric, summary.to_dict())
    return f"round {summary.index}: {pairs}{truncated}, {evaluation}, {summary.wall_time_s:.1f}s"


def create_store(url: str) -> Engine:
    """The engine of the store at `url`, created (a SQLite file readable by its owner only) and
    migrated to this selfplay's schema; a ConfigError naming `store.url` when the file cannot
    be created."""
    try:
        engine = make_engine(url)
    except OSError as err:
        raise ConfigError(
            f"store.url: cannot create the store {sqlite_path(url)} ({err.filename}: "
            f"{err.strerror})"
        ) from None
    upgrade(engine)
    return engine


def _create_private_dir(path: Path, field: str) -> None:
    """Create a directory readable by its owner only (0700; an existing one is kept as it is),
    or raise a ConfigError naming the config field."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise ConfigError(f"{field}: cannot create {path}: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: {path} is not writable")


def run_loop(
    cfg: SelfplayConfig, rounds: int | None = None, reporter: Reporter | None = None
) -> list[summaries.RoundSummary]:
    """Run (or resume) the configured loop for `rounds` rounds (default: cfg.run.rounds)."""
    reporter = reporter or SilentReporter()
    try:  # the task's data is checked before anything is written
        task = make_task(cfg.task, cfg.run.seed)
    except TaskDataError as err:
        raise ConfigError(str(err)) from None
    check_model_sources(cfg)
    check_evaluation(cfg, task)
    metric = resolve_metric(cfg, task.heldout_prompts())
    # A conversation the policy cannot render fails here, not in SFT or a round's generation:
    # every prompt the task can serve is looked at (only the first conversation is rendered).
    check_conversations(cfg.model, [*task.heldout_prompts(), *task.all_train_prompts()])
    check_sft_data(cfg.model, task)
    if cfg.executor.broker_url is None and cfg.training.distributed.strategy != "single":
        # This process launches the ranks: a node without a GPU for each fails here, not at
        # round 0's training (a train worker on another node checks its own GPUs there).
        problem = gpu_shortfall(cfg.training.distributed.nproc)
        if problem is not None:
            raise ConfigError(problem)
    _create_private_dir(cfg.run.output_dir, "run.output_dir")
    engine = create_store(cfg.db_url)
    sessions = session_factory(engine)
    engines = Engines(cfg, sessions, task)
    trackers = Trackers(cfg.logging, reporter)
    try:
        executor = make_executor(cfg.executor)
        if cfg.executor.broker_url is None:
            # This process judges: build the judge before the run row is written, so that a
            # plug-in whose factory raises fails first, and its fix is not a changed config.
            engines.build_judge()
        ctx = Context(cfg, sessions, ensure_run(sessions, cfg), reporter, engines)
        trackers.start(cfg)
        initial = ensure_initial_checkpoint(ctx)
        evaluate_checkpoint(ctx, initial, SFT_ROUND_INDEX)
        with sessions() as s:
            figures = checkpoint_figures(s, s.get(Checkpoint, initial))
        own_baseline = metric in ("win_rate", "win_rate_lc") and cfg.evaluation.reference is None
        baseline = " (the win-rate baseline itself)" if own_baseline else ""
        reporter.line(f"initial policy: {format_evaluation(metric, figures)}{baseline}")
        for index in range(rounds or cfg.run.rounds):
            round_id = ensure_round(ctx, index)
            if round_id is None:
                reporter.line(
                    f"stopping before round {index}: no new best {METRIC_NAMES[metric]} for "
                    f"{cfg.guards.patience} rounds (guards.on_plateau: stop)"
                )
                break
            with sessions() as s:
                already_done = s.get(Round, round_id).status == RoundStatus.DONE
            if not already_done:
                run_round(ctx, round_id, executor)
                trackers.log_round(sessions, ctx.run_id, index)
            with sessions() as s:
                (summary,) = summaries.round_summaries(s, ctx.run_id, index)
            done_note = " (already done)" if already_done else ""
            reporter.line(round_line(summary, metric) + done_note)
            for path in prune_checkpoints(sessions, ctx.run_id, cfg.guards.keep_last):
                reporter.line(f"  deleted checkpoint {path} (guards.keep_last)")
        with sessions() as s:
            rounds_done = summaries.round_summaries(s, ctx.run_id)
            best = queries.best_checkpoint(s, ctx.run_id)
            if best is not None:
                name = "SFT" if best.round_index < 0 else f"round {best.round_index}"
                figures = format_evaluation(metric, checkpoint_figures(s, best))
                reporter.line(f"best checkpoint: {name} ({figures}) {best.path}")
            if rounds_done and metric is not None:
                final = format_evaluation(metric, rounds_done[-1].to_dict())
                reporter.line(f"done: {len(rounds_done)} rounds, final {final}")
    finally:
        trackers.close()
        engines.close()
        engine.dispose()
    return rounds_done
