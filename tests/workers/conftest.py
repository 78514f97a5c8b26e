"""A Celery cluster for real: worker subprocesses on the machine's Redis, the store on PostgreSQL."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

# Re-exported: the tests import clean_env from here.
from tests.workers.processes import Cluster, OwnRedis, clean_env, free_port  # noqa: F401

REDIS_URL = os.environ.get("SELFPLAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def key_prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own (parallel tests share the server); keys dropped after."""
    prefix = f"selfplay-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator:
    clusters: list[Cluster] = []

    def make(config: Path) -> Cluster:
        cluster = Cluster(config, tmp_path)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server binary not installed (apt-get install redis-server)")
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()
