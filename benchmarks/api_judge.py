"""API judge throughput: the `api` judge at concurrency C against the local OpenAI-compatible
server (tests/fake_openai_server.py, a subprocess) answering after L ms.

The bound is C / L requests per second (64 / 0.1 s = 640 req/s); the goal is ≥ 80% of it.
Every request is distinct (no cache hits) and goes through the real `openai` client; the judge
runs pointwise, cache off unless --cache (then a fresh SQLite store: one lookup and one insert
per batch). Prints the rate, its share of the bound, the CPU seconds the judge process and the
server spent, and the machine's load average before and after.

    python benchmarks/api_judge.py --concurrency 64 --latency-ms 100 --requests 3200
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.engine import make_engine, session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from selfplay.config import JudgeConfig  # noqa: E402
from selfplay.judges import JudgeEnv, JudgeItem, make_judge  # noqa: E402
from selfplay.tasks.arithmetic import ArithmeticTask  # noqa: E402
from selfplay.tasks.base import Prompt  # noqa: E402
from tests.fake_openai_server import serve, stats  # noqa: E402


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_pid(port: int) -> int | None:
    """The pid of the process listening on this port (our server subprocess)."""
    import psutil

    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN":
            return conn.pid
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--requests", type=int, default=3200)
    ap.add_argument("--cache", action="store_true", help="A SQLite store as the judge cache.")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")

    with tempfile.TemporaryDirectory() as tmp, serve("--latency-ms", str(args.latency_ms)) as url:
        sessions = None
        if args.cache:
            engine = make_engine(f"sqlite:///{tmp}/bench.db")
            upgrade(engine)
            sessions = session_factory(engine)
        cfg = JudgeConfig(
            name="api",
            api={
                "model": "bench",
                "base_url": url,
                "max_concurrency": args.concurrency,
                "cache": args.cache,
            },
        )
        judge = make_judge(cfg, JudgeEnv(task=ArithmeticTask(0, 10), sessions=sessions))
        prompt = Prompt("Q:12+30=", "42")
        # Warm-up: connections opened, code paths imported.
        judge.judge([JudgeItem(prompt, f"warm {i}") for i in range(args.concurrency)])
        items = [JudgeItem(prompt, f"A:{i}") for i in range(args.requests)]
        pid = _server_pid(int(url.rsplit(":", 1)[1].split("/")[0]))
        load_before = os.getloadavg()
        server_cpu0 = _cpu_s(pid) if pid else float("nan")
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        verdicts = judge.judge(items)
        wall = time.perf_counter() - start
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = (_cpu_s(pid) if pid else float("nan")) - server_cpu0
        load_after = os.getloadavg()
        answered = stats(url)["answered"]
        judge.close()

    ok = sum(v.status == "ok" for v in verdicts)
    rate = args.requests / wall
    bound = args.concurrency / (args.latency_ms / 1000) if args.latency_ms > 0 else math.inf
    bound_text, share = (
        (f"{bound:.0f}", f"{rate / bound:.0%}") if math.isfinite(bound) else ("none", "")
    )
    client_cpu = (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime)
    print("| concurrency | latency | requests | ok | wall s | req/s | bound | share |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.concurrency} | {args.latency_ms:.0f} ms | {args.requests} | {ok} | {wall:.2f} "
        f"| {rate:.0f} | {bound_text} | {share} |"
    )
    print(
        f"\ncache {'on (SQLite)' if args.cache else 'off'}; server answered {answered} calls "
        f"(warm-up included); CPU: judge process {client_cpu:.2f} s "
        f"({client_cpu / args.requests * 1000:.2f} ms/request), server {server_cpu:.2f} s; "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"({os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
