"""The loop with `judge.name: api` against the real local server: a faulty endpoint still lets
the run finish, and the key appears nowhere: not in the store, the export, or the output."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, inspect, select, text

from db import queries
from db.engine import make_engine, session_factory
from db.models import JudgeCacheEntry, Judgment, Response, Round
from selfplay.config import parse_config
from selfplay.driver import run_loop
from tests.fake_openai_server import serve, stats

pytestmark = pytest.mark.heavy


def tiny_config(tmp_path: Path, name: str, api: dict) -> dict:
    """One small round (a short SFT of its own cache entry): 16 prompts × 4 samples."""
    return {
        "run": {"name": name, "seed": 0, "rounds": 1, "output_dir": str(tmp_path / name)},
        "model": {"sft": {"steps": 150, "target_accuracy": None}},
        "task": {"prompts_per_round": 16, "heldout_size": 20},
        "generation": {"samples_per_prompt": 4, "prompts_per_batch": 8},
        "training": {"batch_size": 8, "max_steps": 4, "epochs": 1, "lr": 1e-4},
        "judge": {"name": "api", "api": {"model": "fake-judge", **api}},
    }


def test_loop_finishes_against_a_faulty_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loop")
    flags = ("--fault-rate", "0.3", "--fault-seed", "3", "--hang-s", "3")
    with serve(*flags) as url:
        api = dict(
            base_url=url,
            timeout_s=1.0,
            max_retries=1,  # 0.3² ≈ 9% of judgments fail: the failures are recorded
            backoff_base_s=0.02,
            backoff_max_s=0.1,
            input_cost_per_mtok=1.0,
            output_cost_per_mtok=4.0,
        )
        cfg = parse_config(tiny_config(tmp_path, "faulty", api))
        summaries = run_loop(cfg)
        counts = stats(url)
    assert [s.status for s in summaries] == ["done"]
    assert counts["fault_429"] + counts["fault_500"] + counts["fault_hang"] > 0

    engine = make_engine(cfg.db_url)
    with session_factory(engine)() as s:
        run_id = queries.get_run(s, "faulty").id
        round_ids = s.scalars(select(Round.id).where(Round.run_id == run_id)).all()
        responses = s.scalar(
            select(func.count()).select_from(Response).where(Response.round_id.in_(round_ids))
        )
        judgments = s.scalars(select(Judgment).where(Judgment.judge == "api")).all()
        cache_rows = s.scalar(select(func.count()).select_from(JudgeCacheEntry))
    engine.dispose()
    assert responses == 64 and len(judgments) == 64  # every response judged exactly once
    ok = [j for j in judgments if j.status == "ok"]
    failed = [j for j in judgments if j.status == "failed"]
    assert ok and all(0.0 <= j.score <= 1.0 for j in ok)
    assert all("gave up after 2 attempts" in j.error for j in failed)
    # Tokens and cost stored per judgment: charged once per distinct request, 0 when reused.
    fresh = [j for j in ok if not j.trace["cached"]]
    assert fresh and all(j.tokens > 0 and j.cost > 0 for j in fresh)
    for j in fresh:
        pt, ct = j.trace["prompt_tokens"], j.trace["completion_tokens"]
        assert j.cost == pytest.approx((pt + 4.0 * ct) / 1e6)
    assert all(j.cost == 0.0 for j in ok if j.trace["cached"])
    # One cache row per distinct answered request (the guard's held-out judgments add some).
    assert cache_rows >= len(fresh)


def test_the_key_appears_nowhere(tmp_path):
    marker = f"sk-LEAKCHECK-{uuid.uuid4().hex}"
    env = {**os.environ, "OPENAI_API_KEY": marker, "OPENAI_LOG": "debug"}
    # The server demands the key (so it was sent) and echoes it in answers and error bodies,
    # as a badly behaved proxy might: the judge must scrub what it keeps.
    flags = ("--require-key-env", "OPENAI_API_KEY", "--echo-key", "--fault-rate", "0.3")
    flags += ("--fault-kinds", "429,500", "--retry-after", "0")
    with serve(*flags, env=env) as url:
        # Two retries: a pairwise verdict needs all 6 of its calls; ~15% still fail.
        api = dict(base_url=url, mode="pairwise", max_retries=2, backoff_max_s=0.1)
        path = tmp_path / "leak.yaml"
        path.write_text(yaml.safe_dump(tiny_config(tmp_path, "leak", api)))
        run = subprocess.run(
            [sys.executable, "-m", "selfplay", "run", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        counts = stats(url)
    assert run.returncode == 0, run.stderr
    assert counts["answered"] > 0 and counts.get("unauthorized", 0) == 0

    db = tmp_path / "leak" / "selfplay.db"
    out = tmp_path / "pairs.jsonl"
    export = subprocess.run(
        [sys.executable, "-m", "selfplay", "db", "export", str(out), "--db", f"sqlite:///{db}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr
    assert out.read_text().count("\n") > 0

    engine = make_engine(f"sqlite:///{db}")
    dump = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            dump += [repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"'))]
        echoed = conn.execute(
            text("SELECT count(*) FROM judgments WHERE error LIKE '%[redacted]%'")
        ).scalar()
        echoed += conn.execute(
            text("SELECT count(*) FROM judge_cache WHERE response LIKE '%[redacted]%'")
        ).scalar()
        # The pairwise judge's traces give the round's meta-evaluation a position-bias rate.
        bias_rows = conn.execute(
            text(
                "SELECT count(*) FROM metrics WHERE stage = 'judge_eval' AND name = 'position_bias_rate'"
            )
        ).scalar()
    engine.dispose()
    assert bias_rows == 1
    # The openai client's debug log went to the output (OPENAI_LOG=debug).
    assert "openai._base_client" in run.stderr and "DEBUG" in run.stderr
    files = [p for p in (tmp_path / "leak").rglob("*") if p.is_file()]
    for name, content in [
        ("stdout", run.stdout),
        ("stderr", run.stderr),
        ("export output", export.stdout + export.stderr),
        ("exported pairs", out.read_text()),
        ("store tables", "\n".join(dump)),
        *((str(p), p.read_bytes().decode("latin-1")) for p in files),
    ]:
        assert marker not in content, f"the API key leaked into {name}"
    assert echoed > 0  # the server did echo the key, and the judge scrubbed it
