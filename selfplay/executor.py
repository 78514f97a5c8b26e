"""Executors run a round's stages: in this process (the default) or as Celery tasks.

The driver asks its executor to run each step of its recipe; both executors end in the same
step functions (`selfplay.stages.STEPS`). The Celery one lives in `workers/` and is imported
only when a broker is configured, so the embedded mode needs neither Celery nor Redis.
"""

from __future__ import annotations

from typing import Protocol

from selfplay.config import ConfigError, ExecutorConfig
from selfplay.stages import STEPS, Context


class Executor(Protocol):
    def run_step(self, ctx: Context, step: str, round_id: int) -> None:
        """Run one step of a round (a name in `STEPS`) to completion (its missing work only);
        raise on failure."""
        ...


class InProcessExecutor:
    """Calls the step functions directly (the embedded mode)."""

    def run_step(self, ctx: Context, step: str, round_id: int) -> None:
        """Run the step function in this process."""
        STEPS[step](ctx, round_id)


def make_executor(cfg: ExecutorConfig) -> Executor:
    """In-process without a broker; Celery tasks on the broker when `broker_url` is set."""
    if cfg.broker_url is None:
        return InProcessExecutor()
    try:
        from workers.executor import CeleryExecutor
    except ImportError as err:
        raise ConfigError(
            f"executor.broker_url is set but Celery cannot be imported ({err}); "
            "install the distributed extra: pip install 'selfplay[distributed]'"
        ) from None
    return CeleryExecutor(cfg)
