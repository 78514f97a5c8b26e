"""The `train` queue's worker launches the round's ranks too (training.distributed): a round on
Celery (real Redis, PostgreSQL, worker subprocesses) trained by 2 FSDP ranks on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from db.engine import make_engine, session_factory
from db.models import Metric, Round
from tests.workers.conftest import REDIS_URL
from tests.workers.test_distributed import distributed, one_round, selfplay_run, write_config

pytestmark = pytest.mark.heavy


def test_the_train_worker_trains_a_round_on_two_fsdp_ranks(
    tmp_path: Path, pg_schema_url, key_prefix, cluster_factory
):
    cfg = distributed(pg_schema_url, REDIS_URL, key_prefix)
    cfg.update({k: v for k, v in one_round().items() if k in ("run", "training")})
    cfg["training"]["distributed"] = {"strategy": "fsdp", "nproc": 2}
    config = write_config(tmp_path, "ranks", cfg)
    cluster = cluster_factory(config)
    for queue in ("generate", "judge", "train"):
        cluster.start(queue)
    proc = selfplay_run(config)
    assert proc.returncode == 0, proc.stderr + cluster.log_tails()

    engine = make_engine(pg_schema_url)
    with session_factory(engine)() as s:
        rnd = s.scalars(select(Round)).one()
        assert rnd.status == "done"
        assert (Path(rnd.output_checkpoint.path) / "config.json").exists()
        steps = set(s.scalars(select(Metric.step).where(Metric.stage == "train")))
    engine.dispose()
    assert steps == set(range(1, 11))  # rank 0's metrics, stored by the worker as they came
    assert not (tmp_path / "ranks" / "distributed" / "round-0000").exists()
