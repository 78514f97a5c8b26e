"""The distributed executor: submits a stage's missing work as Celery tasks and waits for it.

Work is computed from the store exactly as in the embedded mode (`missing_blocks`,
`missing_judgments`): one task per generation block or judge chunk (the round's samples, and
after the revise step its revisions), one for training, one for evaluation. The other steps run
in the driver: storing the round's prompts, the judge meta-evaluation and pairing (cheap pure
functions of the store), and the critique → revise step when enabled (it generates with the
driver's own engine). The driver polls the results and keeps polling through a broker restart; a task that fails after its
retries fails the round with the task's traceback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from celery.result import AsyncResult
from kombu.exceptions import ChannelError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from selfplay.config import ExecutorConfig
from selfplay.progress import Reporter
from selfplay.stages import STEPS, Context
from selfplay.stages.generate import missing_blocks
from selfplay.stages.judge import missing_judgments
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

    def jobs(self, ctx: Context, step: str, round_id: int) -> list[Job] | None:
        """The tasks that finish `step`; None for a step that runs in the driver."""
        run_id = ctx.run_id
        if step == "generate":
            blocks = missing_blocks(ctx, round_id)
            return [
                Job("selfplay.generate", (run_id, round_id, b, source), n)
                for (source, b), n in blocks.items()
            ]
        if step == "judge":
            chunks = missing_judgments(ctx, round_id)
            return [
                Job("selfplay.judge", (run_id, round_id, i, [r.id for r, _ in c], repeat), len(c))
                for i, (repeat, c) in enumerate(chunks)
            ]
        if step == "train":
            return [Job("selfplay.train", (run_id, round_id), 1)]
        if step == "evaluate":
            return [Job("selfplay.evaluate", (run_id, round_id), 1)]
        return None

    def run_step(self, ctx: Context, step: str, round_id: int) -> None:
        """Submit the step's missing work and wait for all of it (driver steps run here)."""
        jobs = self.jobs(ctx, step, round_id)
        if jobs is None:
            STEPS[step](ctx, round_id)
            return
        if not jobs:
            return
        submitted = [(self.submit(job, ctx.reporter), job) for job in jobs]
        self.wait(ctx.reporter, f"{step} (workers)", submitted)

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
