"""The driver's task publishing through a Redis outage (a real redis-server this test owns)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from kombu.exceptions import OperationalError

from selfplay.config import ExecutorConfig
from workers.executor import CeleryExecutor, Job

PING = Job("selfplay.ping", (), 1)


class Lines:
    """A reporter that keeps its lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator:
        yield lambda n: None

    def line(self, text: str) -> None:
        self.lines.append(text)


def executor_giving_up_at_once(url: str, broker_wait_s: int) -> CeleryExecutor:
    executor = CeleryExecutor(ExecutorConfig(broker_url=url, broker_wait_s=broker_wait_s))
    # kombu makes a single try, as when its try after a reconnect fails too.
    executor.app.conf.task_publish_retry_policy = {"max_retries": 0}
    return executor


def test_submit_sends_again_after_the_broker_comes_back(own_redis):
    executor = executor_giving_up_at_once(own_redis.url, broker_wait_s=120)
    reporter = Lines()
    executor.submit(PING, reporter)  # the pooled connection exists before the outage
    own_redis.stop()
    restart = threading.Timer(3, own_redis.start)
    restart.start()
    try:
        executor.submit(PING, reporter)
    finally:
        restart.join()
    assert any("broker unreachable sending selfplay.ping" in x for x in reporter.lines)
    client = redis.Redis.from_url(own_redis.url)
    assert client.llen("judge") == 2  # both pings queued, none lost to the outage
    client.close()


def test_submit_fails_once_the_broker_stays_away_past_the_wait(own_redis):
    executor = executor_giving_up_at_once(own_redis.url, broker_wait_s=2)
    executor.submit(PING, Lines())
    own_redis.stop()
    reporter = Lines()
    with pytest.raises(OperationalError):
        executor.submit(PING, reporter)
    assert reporter.lines  # it said it was retrying before giving up
