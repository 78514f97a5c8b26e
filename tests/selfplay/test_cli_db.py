"""`selfplay db stats|rounds|pairs|show|export` in-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from selfplay.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_stats_json_has_each_rounds_figures(seeded_url):
    result = invoke("db", "stats", "--db", seeded_url, "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert [(s["run"], s["index"]) for s in stats] == [("demo", 0), ("demo", 1)]
    s0 = stats[0]
    assert (s0["prompts"], s0["responses"], s0["pairs"]) == (3, 12, 6)
    assert s0["judgments"] == {"ok": 24}
    assert abs(s0["mean_margin"] - 2 / 3) < 1e-9
    assert (s0["mean_chosen_tokens"], s0["mean_rejected_tokens"]) == (3.5, 1.5)
    # `llm` disagrees with `verifier` on sample 1 of every prompt: 9 of 12 responses agree.
    assert abs(s0["judge_agreement"] - 0.75) < 1e-9
    assert abs(s0["reward_margin"] - 0.2) < 1e-9
    assert s0["heldout_accuracy"] == 0.5
    table = invoke("db", "stats", "--db", seeded_url, "--run", "demo", "--round", "1")
    assert table.exit_code == 0 and "demo" in table.output and "ok:24" in table.output


def test_rounds_lists_each_round(seeded_url):
    result = invoke("db", "rounds", "--db", seeded_url, "--json")
    assert result.exit_code == 0, result.output
    assert [(r["index"], r["status"], r["pairs"]) for r in json.loads(result.output)] == [
        (0, "done", 6),
        (1, "done", 6),
    ]
    assert "done" in invoke("db", "rounds", "--db", seeded_url).output


def test_pairs_filters_and_keyset_pages(seeded_url):
    def ids(*extra: str) -> list[int]:
        result = invoke("db", "pairs", "--db", seeded_url, "--json", *extra)
        assert result.exit_code == 0, result.output
        return [p["id"] for p in json.loads(result.output)]

    everything = ids("--limit", "100")
    assert len(everything) == 12 and everything == sorted(everything)
    first = ids("--limit", "5")
    second = ids("--limit", "5", "--after", str(first[-1]))
    assert first + second == everything[:10]
    assert len(ids("--run", "demo", "--round", "1")) == 6
    assert len(ids("--min-margin", "0.5")) == 6
    assert len(ids("--search", "<script>")) == 4
    assert len(ids("--run", "demo", "--round", "1", "--search", "<script>")) == 2
    assert len(ids("--run", "demo", "--search", "Q:11")) == 2
    assert len(ids("--search", "100%")) == 0  # `%` is literal, not a wildcard
    assert len(ids("--judge", "llm")) == 12 and ids("--judge", "nobody") == []
    table = invoke("db", "pairs", "--db", seeded_url, "--limit", "2")
    assert table.exit_code == 0 and "next page: --after" in table.output


def test_show_prints_responses_judgments_and_checkpoint(seeded_url):
    pair_id = json.loads(invoke("db", "pairs", "--db", seeded_url, "--json").output)[0]["id"]
    result = invoke("db", "show", str(pair_id), "--db", seeded_url, "--json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert d["chosen"]["text"] == "A3xxx" and d["rejected"]["text"] == "A0"
    assert d["chosen"]["checkpoint_path"] == "/ckpt/-1"
    judges = {j["judge"]: j for j in d["chosen"]["judgments"]}
    assert (
        judges["verifier"]["critique"] == "critique 3" and judges["llm"]["trace"]["tool"] == "calc"
    )
    table = invoke("db", "show", str(pair_id), "--db", seeded_url)
    assert table.exit_code == 0 and "critique 3" in table.output and "/ckpt/-1" in table.output


def test_bad_input_is_a_clear_error_without_traceback(seeded_url, tmp_path):
    cases = [
        (("db", "show", "999999", "--db", seeded_url), "no pair with id 999999"),
        (("db", "pairs", "--db", seeded_url, "--run", "nope"), "no run named 'nope'"),
        (("db", "pairs", "--db", seeded_url, "--round", "1"), "needs a run"),
        (("db", "pairs", "--db", seeded_url, "--run", "demo", "--round", "7"), "has no round 7"),
        (("db", "pairs", "--db", seeded_url, "--limit", "0"), "limit: must be between"),
        (("db", "pairs", "--db", seeded_url, "--search", "  "), "search: must not be blank"),
        (("db", "stats", "--db", seeded_url, "--run", "nope"), "no run named 'nope'"),
        (("db", "export", str(tmp_path / "x"), "--db", seeded_url, "--format", "csv"), "--format"),
        (("db", "pairs", "--db", f"sqlite:///{tmp_path / 'none.db'}"), "no selfplay store"),
        (("db", "pairs", "--db", "notaurl"), "cannot open store"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), args
    # Out-of-range ids and indexes are usage errors (exit 2), before any query.
    for args in [
        ("db", "show", "99999999999999999999", "--db", seeded_url),
        ("db", "pairs", "--db", seeded_url, "--after", "99999999999999999999"),
        ("db", "pairs", "--db", seeded_url, "--after", "-3"),
        ("db", "pairs", "--db", seeded_url, "--run", "demo", "--round", "-1"),
    ]:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), args


def test_export_jsonl_and_parquet_stream_every_pair(seeded_url, tmp_path):
    out = tmp_path / "pairs.jsonl"
    result = invoke("db", "export", str(out), "--db", seeded_url, "--run", "demo", "--round", "0")
    assert result.exit_code == 0 and "exported 6 pairs" in result.output, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6
    assert {"prompt", "chosen", "rejected", "margin", "pair_id", "checkpoint_id"} <= set(rows[0])
    assert all(r["round"] == 0 and r["run"] == "demo" for r in rows)

    parquet = tmp_path / "pairs.parquet"
    result = invoke("db", "export", str(parquet), "--db", seeded_url, "--format", "parquet")
    assert result.exit_code == 0, result.output
    table = pq.read_table(parquet)
    assert table.num_rows == 12 and table.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert sorted(table.column("pair_id").to_pylist()) == table.column("pair_id").to_pylist()


def test_dashboard_refuses_a_public_bind_without_a_token(seeded_url):
    result = invoke("dashboard", "--db", seeded_url, "--host", "0.0.0.0")
    assert result.exit_code == 2 and "--token" in result.output


def test_export_pages_and_row_groups_keep_every_pair_once(seeded_url, tmp_path, monkeypatch):
    from sqlalchemy.orm import Session

    from db.engine import make_engine
    from db.inspect import PairFilter
    from selfplay import export

    monkeypatch.setattr(export, "ROW_GROUP", 4)
    engine = make_engine(seeded_url)
    with Session(bind=engine) as s:
        n = export.export_pairs(s, PairFilter(), "parquet", tmp_path / "p.parquet", batch=5)
    engine.dispose()
    f = pq.ParquetFile(tmp_path / "p.parquet")
    ids = f.read().column("pair_id").to_pylist()
    assert n == 12 and len(ids) == 12 and ids == sorted(set(ids))
    assert f.metadata.num_row_groups == 3  # 5 + 5 (flushed at ≥ 4), then the last 2
