"""One quickstart round distributed (Celery, Redis, PostgreSQL, workers here) vs embedded.

    python benchmarks/distributed_round.py [--config configs/quickstart.yaml] [--pings 200]
        [--sft-steps N] [--pings-only]

Same config, seed and sizes for both: the embedded run on SQLite in-process, then the same
round with one worker per queue (generate, judge, train) as subprocesses on this machine, the
store in a fresh PostgreSQL schema and the broker on Redis under a key prefix of its own. The
figure compared is the round's wall time as stored on its row (its five stages; the SFT of the
initial policy is cached and shared, the workers are started beforehand as in a deployment).
Then the dispatch overhead: round trips of an empty task through the broker, one at a time.
Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
import yaml
from sqlalchemy import create_engine, text

from db.engine import make_engine, session_factory
from db.queries import get_run
from db.summaries import round_summaries


def round_wall_time(url: str, run: str) -> float:
    engine = make_engine(url)
    with session_factory(engine)() as s:
        (summary,) = round_summaries(s, get_run(s, run).id, 0)
    engine.dispose()
    assert summary.status == "done", summary
    return summary.wall_time_s


def selfplay(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "selfplay", *args], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument(
        "--sft-steps", type=int, help="Cap the initial SFT (cheaper; the round's sizes stay)."
    )
    parser.add_argument(
        "--pings-only", action="store_true", help="Only the dispatch overhead (one judge worker)."
    )
    args = parser.parse_args()

    base = yaml.safe_load(Path(args.config).read_text())
    base["run"]["rounds"] = 1
    if args.sft_steps is not None:
        base.setdefault("model", {})["sft"] = {"steps": args.sft_steps, "target_accuracy": None}
    work = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFPLAY_")}
    if "SELFPLAY_CACHE_DIR" in os.environ:
        env["SELFPLAY_CACHE_DIR"] = os.environ["SELFPLAY_CACHE_DIR"]

    t_embedded = None
    if not args.pings_only:
        embedded = dict(
            base, run=dict(base["run"], name="bench-embedded", output_dir=str(work / "e"))
        )
        (work / "embedded.yaml").write_text(yaml.safe_dump(embedded))
        selfplay("run", str(work / "embedded.yaml"), env=env)
        t_embedded = round_wall_time(f"sqlite:///{work / 'e' / 'selfplay.db'}", "bench-embedded")

    schema, prefix = f"bench_{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:8]}:"
    admin = create_engine(args.pg_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    store = f"{args.pg_url}?options=-csearch_path%3D{schema}"
    dist = dict(base, run=dict(base["run"], name="bench-distributed", output_dir=str(work / "d")))
    dist["store"] = {"url": store}
    dist["executor"] = {"broker_url": args.redis_url, "key_prefix": prefix}
    config = work / "distributed.yaml"
    config.write_text(yaml.safe_dump(dist))
    queues = ("judge",) if args.pings_only else ("generate", "judge", "train")
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "selfplay", "worker", str(config), "--queues", q],
            env=env,
            stdout=open(work / f"worker-{q}.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for q in queues
    ]
    try:
        if t_embedded is not None:
            selfplay("run", str(config), env=env)
            t_distributed = round_wall_time(store, "bench-distributed")
        pings = ping_round_trips(dist, args.pings)
    finally:
        for w in workers:
            os.killpg(w.pid, signal.SIGTERM)
        for w in workers:
            w.wait(timeout=60)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        client = redis.Redis.from_url(args.redis_url)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)

    if t_embedded is not None:
        print(f"\nconfig {args.config}, 1 round, seed {base['run']['seed']}\n")
        print("| mode | round wall time | ratio |\n|---|---|---|")
        print(f"| embedded (SQLite, in-process) | {t_embedded:.1f} s | 1.00× |")
        print(
            f"| distributed (Celery, Redis, PostgreSQL) | {t_distributed:.1f} s "
            f"| {t_distributed / t_embedded:.2f}× |"
        )
    print(
        f"\nempty task round trip ({len(pings)} sequential): median "
        f"{statistics.median(pings):.1f} ms, p90 {statistics.quantiles(pings, n=10)[-1]:.1f} ms"
    )


def ping_round_trips(cfg: dict, n: int) -> list[float]:
    """Milliseconds from send to result of the empty `selfplay.ping` task, one at a time."""
    from selfplay.config import parse_config
    from workers.app import make_app

    app = make_app(parse_config(cfg).executor)
    app.send_task("selfplay.ping").get(timeout=120)  # the judge worker is up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        app.send_task("selfplay.ping").get(timeout=30, interval=0.001)
        times.append((time.perf_counter() - start) * 1000)
    return times


if __name__ == "__main__":
    main()
