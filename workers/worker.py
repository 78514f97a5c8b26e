"""`selfplay worker`: a Celery worker on some of the queues, with selfplay's delivery settings."""

from __future__ import annotations

import socket

from selfplay.config import ConfigError, SelfplayConfig
from workers.app import QUEUES, make_app


def parse_queues(text: str) -> list[str]:
    """`generate,judge` → ["generate", "judge"]; raises ConfigError naming an unknown queue."""
    queues = [q.strip() for q in text.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if unknown or not queues:
        raise ConfigError(
            f"--queues: unknown queue(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(QUEUES)}"
        )
    return queues


def worker_argv(queues: list[str], concurrency: int, hostname: str | None = None) -> list[str]:
    """The `celery worker` arguments for these queues.

    One process (`solo` pool) at concurrency 1: the task runs in the worker process itself, so
    the generation engine it keeps loaded is the one every task uses (the trainer's queue runs
    this way). Higher concurrency forks that many processes, each with its own engine.
    """
    host = hostname or f"selfplay-{'-'.join(queues)}@{socket.gethostname()}"
    return [
        "worker",
        f"--queues={','.join(queues)}",
        f"--concurrency={concurrency}",
        f"--pool={'solo' if concurrency == 1 else 'prefork'}",
        f"--hostname={host}",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
    ]


def start_worker(
    cfg: SelfplayConfig, queues: list[str], concurrency: int, hostname: str | None = None
) -> None:
    """Run a worker in this process until it is stopped; tasks write to `cfg.db_url`."""
    if cfg.executor.broker_url is None:
        raise ConfigError("executor.broker_url is not set (config or SELFPLAY_BROKER_URL)")
    app = make_app(cfg.executor, cfg.db_url)
    app.worker_main(worker_argv(queues, concurrency, hostname))
