"""Inspecting a store of 1M pairs: every dashboard page, `selfplay db pairs`, and a Parquet export.

Fills one run (R rounds; per prompt K=4 responses, one judgment each, 2 pairs) by bulk insert:
executemany in one transaction on SQLite, COPY on PostgreSQL. The bulk fill writes no round
summaries, like a store whose rounds finished before summaries existed: the run page is timed once
so, then `selfplay db summarize` stores them (what the driver does as each round finishes). Then
times, in-process: each dashboard page through FastAPI's TestClient (first: the first request after
start; warm: the median of the next 5), `selfplay db pairs|stats|rounds` through typer's CliRunner
(engine creation included), and `selfplay db export --format parquet` in a subprocess (wall time
and its peak RSS, for all pairs and for one round, to show memory flat in the rows). Prints a
Markdown table.

    python benchmarks/store_scale.py --backend sqlite --pairs 1000000
    python benchmarks/store_scale.py --backend postgresql --pairs 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import create_engine, text

from db.engine import make_engine
from db.migrate import upgrade

K, PAIRS_PER_PROMPT = 4, 2
PG_URL = os.environ.get("SELFPLAY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PG_SCHEMA = "bench_store_scale"
NOW = "2026-11-22 12:00:00.000000"


def rows(n_pairs: int, rounds: int) -> Iterator[tuple[str, list[tuple]]]:
    """(table, rows) batches of the synthetic store, ids assigned here, in FK order per round."""
    rng = random.Random(0)
    prompts_per_round = n_pairs // PAIRS_PER_PROMPT // rounds
    yield "runs", [(1, "bench", json.dumps({"bench": True}), NOW)]
    yield (
        "checkpoints",
        [(t + 2, 1, t, f"/ckpt/{t}", 0.3 + 0.05 * (t + 1), NOW) for t in range(-1, rounds)],
    )
    yield (
        "rounds",
        [
            (t + 1, 1, t, "done", None, t + 1, t + 2, 0.35 + 0.05 * t, 20.0, NOW, NOW)
            for t in range(rounds)
        ],
    )
    pid = rid = jid = xid = 0
    for t in range(rounds):
        batch_p, batch_r, batch_j, batch_x = [], [], [], []
        for i in range(prompts_per_round):
            pid += 1
            a, b = rng.randrange(100), rng.randrange(100)
            batch_p.append((pid, t + 1, i, f"Q: {a}+{b}=", str(a + b)))
            ids, scores = [], []
            for k in range(K):
                rid += 1
                ans = str(a + b + rng.choice((0, 0, 1, -1, 10)))
                n_tok = len(ans) + 1
                score = 1.0 if ans == str(a + b) else rng.choice((0.0, 0.25, 0.5))
                batch_r.append(
                    (
                        rid,
                        t + 1,
                        pid,
                        k,
                        t + 1,
                        ans,
                        json.dumps([7] * n_tok),
                        n_tok,
                        -1.5,
                        "stop",
                        NOW,
                    )
                )
                jid += 1
                batch_j.append(
                    (jid, rid, "verifier", 0, "ok", score, "ok" if score == 1.0 else "wrong", NOW)
                )
                ids.append(rid)
                scores.append(score)
            order = sorted(range(K), key=lambda j: -scores[j])
            for c, r in ((order[0], order[-1]), (order[1], order[-2])):
                xid += 1
                margin = max(scores[c] - scores[r], 0.25)
                batch_x.append(
                    (
                        xid,
                        t + 1,
                        pid,
                        ids[c],
                        ids[r],
                        scores[c],
                        scores[c] - margin,
                        margin,
                        1.0,
                        "max_min",
                        NOW,
                    )
                )
        yield "prompts", batch_p
        yield "responses", batch_r
        yield "judgments", batch_j
        yield "pairs", batch_x


COLUMNS = {
    "runs": "id, name, config, created_at",
    "checkpoints": "id, run_id, round_index, path, heldout_accuracy, created_at",
    "rounds": "id, run_id, index, status, error, policy_checkpoint_id, output_checkpoint_id, "
    "heldout_accuracy, wall_time_s, created_at, finished_at",
    "prompts": "id, round_id, index, text, answer",
    "responses": "id, round_id, prompt_id, sample_index, checkpoint_id, text, token_ids, "
    "num_tokens, logprob, finish_reason, created_at",
    "judgments": "id, response_id, judge, repeat, status, score, critique, created_at",
    "pairs": "id, round_id, prompt_id, chosen_id, rejected_id, chosen_score, rejected_score, "
    "margin, weight, builder, created_at",
}


def fill_sqlite(url: str, n_pairs: int, rounds: int) -> None:
    import sqlite3

    path = url.removeprefix("sqlite:///")
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    for table, batch in rows(n_pairs, rounds):
        cols = COLUMNS[table]
        quoted = ", ".join(f'"{c.strip()}"' for c in cols.split(","))
        marks = ", ".join("?" for _ in cols.split(","))
        conn.executemany(f"INSERT INTO {table} ({quoted}) VALUES ({marks})", batch)
    conn.commit()
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()


def fill_postgres(url: str, n_pairs: int, rounds: int) -> None:
    import psycopg

    admin = create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(f'DROP SCHEMA IF EXISTS "{PG_SCHEMA}" CASCADE'))
        c.execute(text(f'CREATE SCHEMA "{PG_SCHEMA}"'))
    admin.dispose()
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, options=f"-csearch_path={PG_SCHEMA}") as conn:
        with conn.cursor() as cur:
            for table, batch in rows(n_pairs, rounds):
                quoted = ", ".join(f'"{c.strip()}"' for c in COLUMNS[table].split(","))
                with cur.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
                    for row in batch:
                        copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")


def timed(fn: Callable[[], object], repeat: int = 5) -> tuple[float, float]:
    """(first call, median of the next `repeat`) in milliseconds."""
    t0 = time.perf_counter()
    fn()
    cold = (time.perf_counter() - t0) * 1000
    warm = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        warm.append((time.perf_counter() - t0) * 1000)
    return cold, statistics.median(warm)


def measure(url: str, rounds: int) -> list[tuple[str, float, float]]:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from selfplay.cli import app as cli
    from selfplay.dashboard import create_app

    results = []
    mid_round = rounds // 2
    with make_engine(url).connect() as c:
        max_id = c.execute(text("SELECT max(id) FROM pairs")).scalar_one()
    pages = [
        ("dashboard /  (runs)", "/"),
        ("dashboard /runs/1  (round plots)", "/runs/1"),
        (f"dashboard /runs/1/rounds/{mid_round}", f"/runs/1/rounds/{mid_round}"),
        ("dashboard /pairs  (first page)", "/pairs"),
        ("dashboard /pairs?after=<middle id>", f"/pairs?after={max_id // 2}"),
        (f"dashboard /pairs?run&round={mid_round}", f"/pairs?run=bench&round={mid_round}"),
        ("dashboard /pairs?min_margin=0.9", "/pairs?min_margin=0.9"),
        ("dashboard /pairs?search=+1= (common)", "/pairs?search=%2B1%3D"),
        ("dashboard /pairs?search=Q: 99+98= (rare)", "/pairs?search=Q%3A%2099%2B98%3D"),
        ("dashboard /pairs?search=zzz (no match)", "/pairs?search=zzz"),
        ("dashboard /pairs/{id}  (pair detail)", f"/pairs/{max_id // 3}"),
    ]
    with TestClient(create_app(url)) as client:
        for label, path in pages:

            def get(path: str = path) -> None:
                r = client.get(path)
                assert r.status_code == 200, (path, r.status_code, r.text[:300])

            results.append((label, *timed(get)))
    runner = CliRunner()
    pairs = ["pairs", "--limit", "20"]
    for label, args in [
        ("selfplay db pairs --limit 20  (Rich table)", pairs),
        ("selfplay db pairs --limit 20 --json", [*pairs, "--json"]),
        (
            f"selfplay db pairs --run bench --round {mid_round} --json",
            [*pairs, "--run", "bench", "--round", str(mid_round), "--json"],
        ),
        ("selfplay db pairs --min-margin 0.9 --json", [*pairs, "--min-margin", "0.9", "--json"]),
        ("selfplay db pairs --search '+1=' --json", [*pairs, "--search", "+1=", "--json"]),
        (
            "selfplay db pairs --after <middle id> --json",
            [*pairs, "--after", str(max_id // 2), "--json"],
        ),
        ("selfplay db stats --json  (every round)", ["stats", "--json"]),
        ("selfplay db rounds --json", ["rounds", "--json"]),
    ]:

        def cli_db(args: list[str] = args) -> None:
            r = runner.invoke(cli, ["db", *args, "--db", url])
            assert r.exit_code == 0, r.output

        results.append((label, *timed(cli_db)))
    return results


def summarize(url: str) -> tuple[float, float]:
    """(run page without summaries in ms, `selfplay db summarize` in s); a no-op when stored."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from selfplay.cli import app as cli
    from selfplay.dashboard import create_app

    with TestClient(create_app(url)) as client:
        t0 = time.perf_counter()
        assert client.get("/runs/1").status_code == 200
        page_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    r = CliRunner().invoke(cli, ["db", "summarize", "--db", url])
    assert r.exit_code == 0, r.output
    return page_ms, time.perf_counter() - t0


def export(url: str, extra: list[str]) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB, rows) of `selfplay db export --format parquet` in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pairs.parquet"
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "selfplay",
                "db",
                "export",
                str(out),
                "--db",
                url,
                "--format",
                "parquet",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        output = proc.stdout.read().decode()
        assert os.waitstatus_to_exitcode(status) == 0, output
        import pyarrow.parquet as pq

        n = pq.ParquetFile(out).metadata.num_rows
    return elapsed, usage.ru_maxrss / 1024, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), required=True)
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--sqlite-path", default="/tmp/selfplay-bench/store_scale.db")
    ap.add_argument("--skip-fill", action="store_true", help="Reuse the store already there.")
    ap.add_argument("--fill-only", action="store_true", help="Fill the store, measure nothing.")
    ap.add_argument("--no-export", action="store_true", help="Skip the Parquet exports.")
    args = ap.parse_args()

    if args.backend == "sqlite":
        Path(args.sqlite_path).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{args.sqlite_path}"
        fill = fill_sqlite
    else:
        url = f"{PG_URL}?options=-csearch_path%3D{PG_SCHEMA}"
        fill = fill_postgres
    if not args.skip_fill:
        t0 = time.perf_counter()
        fill(url, args.pairs, args.rounds)
        print(
            f"filled {args.pairs} pairs ({args.backend}) in {time.perf_counter() - t0:.0f}s",
            flush=True,
        )
    if args.fill_only:
        return
    page_ms, secs = summarize(url)
    print(f"run page before `db summarize`: {page_ms:.0f} ms; `db summarize`: {secs:.1f} s")
    print(f"| {args.backend}: what | first request (ms) | warm median of 5 (ms) |")
    print("|---|---|---|")
    for label, cold, warm in measure(url, args.rounds):
        print(f"| {label} | {cold:.0f} | {warm:.1f} |", flush=True)
    if args.no_export:
        return
    for label, extra in [
        (
            f"export parquet, one round ({args.pairs // args.rounds} pairs)",
            ["--run", "bench", "--round", "0"],
        ),
        (f"export parquet, all {args.pairs} pairs", []),
    ]:
        secs, rss, n = export(url, extra)
        print(f"| {label}: {n} rows | {secs:.1f} s | peak RSS {rss:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
