"""The Celery app factory: broker, result backend and delivery guarantees from the config.

There is no module-level app: the driver and each worker build theirs from `ExecutorConfig`,
so the broker URL comes from the YAML file or `SELFPLAY_BROKER_URL`, never from code.
"""

from __future__ import annotations

from celery import Celery
from celery.backends.redis import RedisBackend

from selfplay.config import ExecutorConfig

# Queue per kind of machine: generation (GPU), judging (CPU or API), training (the GPU trainer).
QUEUES = ("generate", "judge", "train")

ROUTES = {
    "selfplay.generate": {"queue": "generate"},
    # Held-out evaluation generates greedily: it runs where the generation engine is loaded.
    "selfplay.evaluate": {"queue": "generate"},
    "selfplay.judge": {"queue": "judge"},
    "selfplay.train": {"queue": "train"},
    "selfplay.ping": {"queue": "judge"},
}


class PollingRedisBackend(RedisBackend):
    """Celery's Redis result backend without the pub/sub subscription made at each send.

    The driver polls task states (CeleryExecutor.wait), so the subscription only added a
    connection that, after a broker outage of more than ~20 s, gives up for good ("The Celery
    application must be restarted") and fails every later send. `AsyncResult.get()` still
    works: it subscribes when it is called.
    """

    def on_task_call(self, producer: object, task_id: str) -> None:
        """Subscribe to nothing."""


def make_app(cfg: ExecutorConfig, db_url: str | None = None) -> Celery:
    """A Celery app on the configured broker with selfplay's tasks registered.

    `db_url` is the store the worker's tasks write to (a driver that only submits may omit it).
    Tasks are acknowledged after they finish (`acks_late`) and requeued when their worker dies,
    so a task is redelivered until its work has landed; the stage functions' idempotent writes
    make a repeated delivery a no-op.
    """
    from workers.tasks import register_tasks

    if cfg.broker_url is None:
        raise ValueError("executor.broker_url is not set (config or SELFPLAY_BROKER_URL)")
    transport = {"visibility_timeout": cfg.visibility_timeout_s}
    if cfg.key_prefix:
        transport["global_keyprefix"] = cfg.key_prefix
    app = Celery(
        "selfplay",
        broker=cfg.broker_url,
        backend=_result_backend(cfg.result_backend or cfg.broker_url),
        set_as_current=False,
    )
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_routes=ROUTES,
        task_default_queue="judge",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        # One task at a time per worker process: a long task never holds a second one hostage.
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=dict(transport),
        # Survive a broker restart: keep reconnecting, on startup and later.
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_channel_error_retry=True,
        result_backend_always_retry=True,
        result_backend_max_retries=60,
        task_publish_retry_policy={
            "max_retries": 60,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2,
        },
        result_expires=7 * 24 * 3600,
        selfplay_db_url=db_url,
    )
    register_tasks(app, cfg)
    return app


def _result_backend(url: str) -> str:
    """The result backend URL, a Redis one served by PollingRedisBackend."""
    if url.startswith(("redis://", "rediss://")):
        return f"{__name__}:PollingRedisBackend+{url}"
    return url
