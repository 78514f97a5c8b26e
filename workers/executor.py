"""The distributed executor: submits a stage's missing work as Celery tasks and waits for it.

Work is computed from the store exactly as in the embedded mode (`missing_blocks`,
`missing_judgments`): one task per generation block or judge chunk, one for training, one for
evaluation. Pairing is a cheap pure function of the store and runs in the driver, as does the
critique → revise stage when enabled (it generates with the driver's own engine and judges
the revisions in-process). The driver
polls the results and keeps polling through a broker restart; a task that fails after its
retries fails the round with the task's traceback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from celery.result import AsyncResult
from kombu.exceptions import ChannelError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from db.models import RoundStatus
from selfplay.config import ExecutorConfig
from selfplay.progress import Reporter
from selfplay.stages import STAGE_FUNCTIONS, Context, missing_blocks, missing_judgments
from workers.app import make_app

# What a broker outage looks like to a client; the driver waits it out.
BROKER_DOWN = (OperationalError, RedisConnectionError, RedisTimeoutError, ConnectionError)


class TaskFailed(RuntimeError):
    """A Celery task failed after its retries; the message carries the worker's traceback."""


@dataclass(frozen=True)
class Job:
    """One task to submit: its name, its arguments (ids only) and its units of progress."""

    name: str
    args: tuple
    units: int


class CeleryExecutor:
    """Runs generation, judging, training and evaluation as Celery tasks on the broker."""

    def __init__(self, cfg: ExecutorConfig) -> None:
        self.cfg = cfg
        self.app = make_app(cfg)

    def jobs(self, ctx: Context, stage: str, round_id: int) -> list[Job] | None:
        """The tasks that finish `stage`; None for a stage that runs in the driver."""
        run_id = ctx.run_id
        if stage == RoundStatus.GENERATING:
            blocks = missing_blocks(ctx, round_id)
            return [
                Job("selfplay.generate", (run_id, round_id, b, source), n)
                for (source, b), n in blocks.items()
            ]
        if stage == RoundStatus.JUDGING:
            chunks = missing_judgments(ctx, round_id)
            return [
                Job("selfplay.judge", (run_id, round_id, i, [r.id for r, _ in c], repeat), len(c))
                for i, (repeat, c) in enumerate(chunks)
            ]
        if stage == RoundStatus.TRAINING:
            return [Job("selfplay.train", (run_id, round_id), 1)]
        if stage == RoundStatus.EVALUATING:
            return [Job("selfplay.evaluate", (run_id, round_id), 1)]
        return None

    def run_stage(self, ctx: Context, stage: str, round_id: int) -> None:
        """Submit the stage's missing work and wait for all of it (pairing runs here)."""
        jobs = self.jobs(ctx, stage, round_id)
        if jobs is None:
            STAGE_FUNCTIONS[stage](ctx, round_id)
            return
        submitted = [(self.submit(job, ctx.reporter), job) for job in jobs]
        self.wait(ctx.reporter, f"{stage} (workers)", submitted)

    def submit(self, job: Job, reporter: Reporter) -> AsyncResult:
        """Send one task, through a broker outage.

        kombu retries a publish while it cannot connect (task_publish_retry_policy) but gives
        up when the first try after a reconnect fails as well (a Redis that accepts
        connections while it still loads its append-only file, a pooled connection broken by
        the restart). The driver then waits and sends again, for up to
        `executor.broker_wait_s`, and says so; a task sent twice runs twice, which every task
        tolerates (each writes only what the store still misses).
        """
        deadline = time.monotonic() + self.cfg.broker_wait_s
        delay = 0.5
        while True:
            try:
                return self.app.send_task(job.name, args=job.args)
            except (*BROKER_DOWN, ChannelError) as err:
                if time.monotonic() + delay > deadline:
                    raise
                reporter.line(
                    f"broker unreachable sending {job.name}: {err!r}; retrying in {delay:.1f} s"
                )
                time.sleep(delay)
                delay = min(2 * delay, 5.0)

    def wait(self, reporter: Reporter, description: str, submitted: list) -> None:
        """Poll until every task succeeded; raise TaskFailed on the first failure."""
        pending: list[tuple[AsyncResult, Job]] = list(submitted)
        total = sum(job.units for _, job in pending)
        with reporter.bar(description, total) as advance:
            while pending:
                waiting = []
                for result, job in pending:
                    try:
                        state = result.state
                    except BROKER_DOWN:
                        waiting.append((result, job))
                        continue
                    if state == "SUCCESS":
                        advance(job.units)
                    elif state == "FAILURE":
                        raise TaskFailed(
                            f"task {job.name}{job.args[:3]} ({result.id}) failed: "
                            f"{result.result!r}\n{result.traceback or ''}"
                        )
                    else:
                        waiting.append((result, job))
                pending = waiting
                if pending:
                    time.sleep(self.cfg.poll_interval_s)
