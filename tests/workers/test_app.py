"""The Celery app factory, the worker command line and the executor choice (no broker needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selfplay.cli import app as cli
from selfplay.config import ConfigError, ExecutorConfig, parse_config
from selfplay.executor import InProcessExecutor, make_executor
from workers.app import QUEUES, PollingRedisBackend, make_app
from workers.executor import CeleryExecutor
from workers.worker import parse_queues, worker_argv

ROOT = Path(__file__).parents[2]


def test_app_comes_from_the_config_with_late_acks_and_routes():
    cfg = ExecutorConfig(
        broker_url="redis://example:6379/3", key_prefix="p:", visibility_timeout_s=7200
    )
    app = make_app(cfg, "sqlite:///x.db")
    conf = app.conf
    assert conf.broker_url == "redis://example:6379/3"
    assert conf.result_backend == "workers.app:PollingRedisBackend+redis://example:6379/3"
    assert isinstance(app.backend, PollingRedisBackend) and app.backend.url.endswith(":6379/3")
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options == {"visibility_timeout": 7200, "global_keyprefix": "p:"}
    assert conf.selfplay_db_url == "sqlite:///x.db"
    routes = {name: conf.task_routes[name]["queue"] for name in conf.task_routes}
    assert set(routes.values()) == set(QUEUES)
    assert routes["selfplay.train"] == "train" and routes["selfplay.generate"] == "generate"
    generate = app.tasks["selfplay.generate"]
    assert generate.max_retries == 3 and generate.acks_late and generate.reject_on_worker_lost


def test_app_without_a_broker_is_refused():
    with pytest.raises(ValueError, match="executor.broker_url"):
        make_app(ExecutorConfig())


def test_executor_is_in_process_without_a_broker(monkeypatch):
    monkeypatch.delenv("SELFPLAY_BROKER_URL", raising=False)
    assert isinstance(make_executor(parse_config({}).executor), InProcessExecutor)
    monkeypatch.setenv("SELFPLAY_BROKER_URL", "redis://127.0.0.1:6379/9")
    cfg = parse_config({"run": {"output_dir": "/shared/run"}})
    assert cfg.executor.broker_url == "redis://127.0.0.1:6379/9"
    assert isinstance(make_executor(cfg.executor), CeleryExecutor)


def test_distributed_config_needs_an_absolute_output_dir():
    with pytest.raises(ConfigError, match="run.output_dir must be an absolute path"):
        parse_config({"executor": {"broker_url": "redis://h:6379/0"}, "run": {"output_dir": "r"}})


def test_queues_are_checked_and_mapped_to_worker_arguments():
    assert parse_queues("generate, judge") == ["generate", "judge"]
    with pytest.raises(ConfigError, match="unknown queue.*gpu.*choose from generate, judge, train"):
        parse_queues("generate,gpu")
    assert "--pool=solo" in worker_argv(["train"], 1)
    assert "--pool=prefork" in worker_argv(["judge"], 4) and "--concurrency=4" in worker_argv(
        ["judge"], 4
    )


def test_worker_command_names_a_bad_queue(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("executor:\n  broker_url: redis://127.0.0.1:6379/0\nrun:\n  output_dir: /x\n")
    result = CliRunner().invoke(cli, ["worker", str(config), "--queues", "gpu"])
    assert result.exit_code == 2 and "unknown queue(s) gpu" in result.output


def test_worker_command_without_a_broker_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv("SELFPLAY_BROKER_URL", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("run:\n  name: x\n")
    result = CliRunner().invoke(cli, ["worker", str(config)])
    assert result.exit_code == 2 and "executor.broker_url is not set" in result.output


def test_docker_compose_file_is_valid():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (scripts/test.sh installs the Debian package)")
    proc = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    services = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "config", "--services"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.split()
    assert set(services) >= {
        "redis",
        "postgres",
        "generate-worker",
        "judge-worker",
        "trainer",
        "driver",
    }
