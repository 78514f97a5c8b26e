"""The loop on Celery: real Redis, PostgreSQL and worker subprocesses (one per queue)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, inspect, select

from db import queries
from db.engine import make_engine, session_factory
from db.models import Judgment, Metric, Response, Round
from db.summaries import count_rows
from tests.selfplay.test_loop_e2e import SMALL
from tests.workers.conftest import REDIS_URL, clean_env

pytestmark = pytest.mark.heavy

# The e2e tests' small rounds on a smaller tiny model with a short SFT of its own (seconds, not
# the quickstart's 90 s): these tests are about delivery, not about what the policy learns.
SMALL = {
    **SMALL,
    "model": {
        "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 192},
        "sft": {"steps": 400, "target_accuracy": 0.1},
    },
}


def write_config(tmp_path: Path, name: str, overrides: dict) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(overrides))
    cfg["run"]["output_dir"] = str(tmp_path / name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def distributed(store_url: str, broker_url: str, prefix: str, **executor) -> dict:
    cfg = yaml.safe_load(yaml.safe_dump(SMALL))
    cfg["store"] = {"url": store_url}
    cfg["executor"] = {
        "broker_url": broker_url,
        "key_prefix": prefix,
        "poll_interval_s": 0.2,
        "retry_backoff_max_s": 2,
        **executor,
    }
    return cfg


def selfplay_run(config: Path, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfplay", "run", str(config)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def store_state(url: str) -> tuple[dict[str, int], list[tuple[int, str, float | None]]]:
    """Row counts and round states of run `small`; asserts no response or judgment twice."""
    engine = make_engine(url)
    with session_factory(engine)() as s:
        run_id = queries.get_run(s, "small").id
        counts = count_rows(s, run_id)
        rounds = [
            (r.index, r.status, r.heldout_accuracy)
            for r in s.scalars(select(Round).where(Round.run_id == run_id).order_by(Round.index))
        ]
        for key in (
            (Response.round_id, Response.prompt_id, Response.sample_index),
            (Judgment.response_id, Judgment.judge, Judgment.repeat),
        ):
            dupes = select(*key).group_by(*key).having(func.count() > 1).subquery()
            assert s.scalar(select(func.count()).select_from(dupes)) == 0
    engine.dispose()
    return counts, rounds


def test_two_distributed_rounds_equal_the_embedded_run(
    tmp_path, pg_schema_url, key_prefix, cluster_factory
):
    embedded = selfplay_run(write_config(tmp_path, "embedded", SMALL))
    assert embedded.returncode == 0, embedded.stderr
    expected = store_state(f"sqlite:///{tmp_path / 'embedded' / 'selfplay.db'}")

    config = write_config(tmp_path, "dist", distributed(pg_schema_url, REDIS_URL, key_prefix))
    cluster = cluster_factory(config)
    for queue in ("generate", "judge", "train"):
        cluster.start(queue)
    proc = selfplay_run(config)
    assert proc.returncode == 0, proc.stderr + cluster.log_tails()

    counts, rounds = store_state(pg_schema_url)
    assert (counts, rounds) == expected
    assert all(status == "done" for _, status, _ in rounds) and len(rounds) == 2
    # Each task stored its wall time: one per generation block, per judge chunk, train, eval.
    engine = make_engine(pg_schema_url)
    with session_factory(engine)() as s:
        stages = dict(
            s.execute(
                select(Metric.stage, func.count())
                .where(Metric.stage.like("task_%"))
                .group_by(Metric.stage)
            ).all()
        )
    engine.dispose()
    blocks = SMALL["task"]["prompts_per_round"] // SMALL["generation"]["prompts_per_batch"]
    assert stages == {
        "task_generate": 2 * blocks,
        "task_judge": 2 * blocks,
        "task_train": 2,
        "task_evaluate": 2,
    }


def one_round() -> dict:
    cfg = yaml.safe_load(yaml.safe_dump(SMALL))
    cfg["run"]["rounds"] = 1
    cfg["training"]["max_steps"] = 10
    return cfg


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_generation_worker_sigkilled_mid_task_is_replaced_and_the_round_completes(
    tmp_path, pg_schema_url, key_prefix, cluster_factory
):
    cfg = distributed(pg_schema_url, REDIS_URL, key_prefix, visibility_timeout_s=10)
    cfg.update({k: v for k, v in one_round().items() if k != "store"})
    config = write_config(tmp_path, "kill", cfg)
    cluster = cluster_factory(config)
    # The generation worker SIGKILLs itself right after committing its second block, before
    # the task returns: the message is unacknowledged and its rows are already stored.
    doomed = cluster.start("generate", SELFPLAY_KILL_AT="generating:2")
    cluster.start("judge")
    cluster.start("train")
    driver = subprocess.Popen(
        [sys.executable, "-m", "selfplay", "run", str(config)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert doomed.wait(timeout=300) == -signal.SIGKILL, cluster.log_tails()
        cluster.start("generate")
        _, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr + cluster.log_tails()
    counts, rounds = store_state(pg_schema_url)
    prompts = SMALL["task"]["prompts_per_round"]
    assert counts["responses"] == prompts * SMALL["generation"]["samples_per_prompt"]
    assert counts["judgments"] == counts["responses"]
    assert rounds[0][1] == "done"
    # The killed block's rows had landed before the kill, but its task never finished: its
    # timing row was written by the restarted worker, which got the block again (and wrote no
    # response twice, checked above) along with the blocks still to generate.
    engine = make_engine(pg_schema_url)
    with session_factory(engine)() as s:
        timed = s.scalars(select(Metric.step).where(Metric.stage == "task_generate")).all()
    engine.dispose()
    blocks = SMALL["task"]["prompts_per_round"] // SMALL["generation"]["prompts_per_batch"]
    assert sorted(timed) == list(range(blocks))
    restarted = (tmp_path / "worker-generate-2.log").read_text()
    done = re.findall(r"selfplay\.generate\[\S+\] succeeded", restarted)
    assert len(done) >= 2, restarted


def test_redis_restart_mid_round_driver_and_workers_reconnect(
    tmp_path, pg_schema_url, key_prefix, cluster_factory, own_redis
):
    cfg = distributed(pg_schema_url, own_redis.url, key_prefix, visibility_timeout_s=15)
    cfg.update({k: v for k, v in one_round().items() if k != "store"})
    config = write_config(tmp_path, "restart", cfg)
    cluster = cluster_factory(config)
    for queue in ("generate", "judge", "train"):
        cluster.start(queue)
    driver = subprocess.Popen(
        [sys.executable, "-m", "selfplay", "run", str(config)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    engine = make_engine(pg_schema_url)

    def responses() -> int:
        if not inspect(engine).has_table("responses"):  # the driver has not migrated yet
            return 0
        with session_factory(engine)() as s:
            return s.scalar(select(func.count()).select_from(Response)) or 0

    try:
        # Down while the round is generating: tasks queued, running and finished at that moment.
        wait_for(lambda: responses() > 0, 300, "the first generated block")
        own_redis.stop()
        time.sleep(3)
        own_redis.start()
        _, stderr = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
        engine.dispose()
    assert driver.returncode == 0, stderr + cluster.log_tails()
    counts, rounds = store_state(pg_schema_url)
    assert counts["responses"] == SMALL["task"]["prompts_per_round"] * 4
    assert counts["judgments"] == counts["responses"] and counts["pairs"] > 0
    assert rounds[0][1] == "done"
