"""Processes a distributed run needs, shared by the worker tests and `benchmarks/soak.py`:
`selfplay worker` subprocesses (one per queue) and a redis-server of one's own.

Not a test module and not a conftest: plain helpers, importable as `tests.workers.processes`
from the repository root.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without selfplay overrides (fault hook, broker, store), plus
    `extra`. SELFPLAY_CACHE_DIR is kept, so every process shares one built SFT model."""
    env = {k: v for k, v in os.environ.items() if k not in ("SELFPLAY_KILL_AT",)}
    for var in ("SELFPLAY_BROKER_URL", "SELFPLAY_RESULT_BACKEND", "SELFPLAY_DB_URL"):
        env.pop(var, None)
    env.update(extra)
    return env


class Cluster:
    """Worker subprocesses (`selfplay worker`), one per queue, logging to files.

    Each worker runs in a process group of its own (Celery's prefork pool: the main process and
    its child), so `kill` and `stop` reach both.
    """

    def __init__(self, config: Path, logs: Path) -> None:
        self.config, self.logs = config, logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: dict[str, int] = {}

    def start(self, queue: str, **env: str) -> subprocess.Popen:
        n = self.starts[queue] = self.starts.get(queue, 0) + 1
        log = open(self.logs / f"worker-{queue}-{n}.log", "w")  # noqa: SIM115 - closed by the process
        self.procs[queue] = subprocess.Popen(
            [sys.executable, "-m", "selfplay", "worker", str(self.config), "--queues", queue],
            env=clean_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.procs[queue]

    def kill(self, queue: str) -> int | None:
        """SIGKILL the queue's worker (its whole process group); its exit code before the kill,
        None when it was still running."""
        proc = self.procs[queue]
        before = proc.poll()
        if before is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        return before

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-25:])
            for p in sorted(self.logs.glob("worker-*.log"))
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    """A redis-server of one's own on a free port (append-only file on, fsync at every write,
    so a restart on the same port and directory keeps the queues)."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.dir = free_port(), workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            stdout=open(self.dir / "redis.log", "a"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        else:
            raise RuntimeError("own redis-server did not start")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes its append-only file and exits
            self.proc.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL: no flush at exit (with fsync at every write, nothing acknowledged is lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
