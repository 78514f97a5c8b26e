"""`selfplay db stats|rounds|pairs|show|export` in-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from alembic import command
from sqlalchemy import delete, text
from typer.testing import CliRunner

from db.engine import make_engine
from db.migrate import alembic_config, upgrade
from db.models import Pair, Round
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


def test_summarize_stores_done_rounds_once_and_stats_then_read_them(seeded_url):
    before = json.loads(invoke("db", "stats", "--db", seeded_url, "--json").output)
    assert [s["summarized"] for s in before] == [False, False]  # a store from before summaries
    result = invoke("db", "summarize", "--db", seeded_url)
    assert result.exit_code == 0, result.output
    assert "round 0: summarized" in result.output and "round 1: summarized" in result.output
    again = invoke("db", "summarize", "--db", seeded_url, "--run", "demo")
    assert again.exit_code == 0 and "every done round has its summary" in again.output
    after = json.loads(invoke("db", "stats", "--db", seeded_url, "--json").output)
    assert after == [{**s, "summarized": True} for s in before]
    # A done round's figures now come from its summary, not from its rows.
    engine = make_engine(seeded_url)
    with engine.begin() as conn:
        conn.execute(delete(Pair).where(Pair.margin < 0.5))
    engine.dispose()
    stats = json.loads(invoke("db", "stats", "--db", seeded_url, "--json").output)
    assert [s["pairs"] for s in stats] == [6, 6]
    rounds = json.loads(invoke("db", "rounds", "--db", seeded_url, "--json").output)
    assert [r["pairs"] for r in rounds] == [6, 6]


def test_search_is_literal_and_survives_a_migration_round_trip(seeded_url):
    def hits(term: str) -> int:
        result = invoke("db", "pairs", "--db", seeded_url, "--json", "--search", term)
        assert result.exit_code == 0, result.output
        return len(json.loads(result.output))

    def check() -> None:
        # Prompts: "<script>alert(1)</script> 2+2=" and Q:01+1=, Q:02+1=, Q:11+1=, Q:12+1=.
        assert (hits("1+1="), hits("2+1"), hits("Q:1"), hits("+1")) == (4, 4, 4, 8)
        assert (hits("_1+"), hits("%1"), hits('"x"'), hits("zzz")) == (0, 0, 0, 0)

    check()  # SQLite: rows the triggers indexed as they were inserted
    engine = make_engine(seeded_url)
    command.downgrade(alembic_config(engine), "0003")
    upgrade(engine)  # SQLite: the FTS table is rebuilt from the prompts already there
    check()
    with engine.begin() as conn:
        conn.execute(delete(Round).where(Round.index == 1))  # cascades to its prompts
        if engine.dialect.name == "sqlite":  # the index still matches the prompts
            conn.execute(text("INSERT INTO prompts_fts(prompts_fts) VALUES ('integrity-check')"))
    engine.dispose()
    assert (hits("1+1="), hits("Q:1")) == (2, 0)


def test_a_store_behind_this_selfplays_schema_names_the_upgrade(db_url):
    engine = make_engine(db_url)
    upgrade(engine, "0003")
    engine.dispose()
    for args in (["db", "stats"], ["db", "summarize"], ["status"]):
        result = invoke(*args, "--db", db_url)
        assert result.exit_code == 1, result.output
        message = " ".join(result.output.split())  # Rich wraps long lines
        assert "revision 0003" in message and "selfplay db upgrade" in message


def test_rounds_lists_each_round(seeded_url):
    result = invoke("db", "rounds", "--db", seeded_url, "--json")
    assert result.exit_code == 0, result.output
    assert [(r["index"], r["status"], r["pairs"]) for r in json.loads(result.output)] == [
        (0, "done", 6),
        (1, "done", 6),
    ]
    assert "done" in invoke("db", "rounds", "--db", seeded_url).output


def table_rows(output: str) -> dict[str, list[str]]:
    """A Rich table's rows as {first cell: the other cells}, each cell stripped."""
    rows = {}
    for line in output.splitlines():
        if line.startswith("│"):
            first, *rest = (c.strip() for c in line.strip("│").split("│"))
            rows[first] = rest
    return rows


def test_rounds_and_status_of_a_win_rate_run_show_win_rate_se_and_lc(win_rate_url):
    for args in (["db", "rounds"], ["status"]):
        result = invoke(*args, "--db", win_rate_url)
        assert result.exit_code == 0, result.output
        assert "win rate ± SE" in result.output and "LC win rate" in result.output
        assert "held-out acc" not in result.output  # no held-out prompt has an answer
        rows = table_rows(result.output)
        # The initial policy is its own baseline: 0.5 by definition, without an SE.
        assert rows["initial"][:5] == ["sft", "", "", "0.500", "0.500"]
        assert rows["0"][2:5] == ["6", "0.600 ± 0.050", "0.550"]
        assert rows["1"][2:5] == ["6", "0.700 ± 0.040", "0.620"]
    for args in (["db", "rounds"], ["status"]):
        rounds = json.loads(invoke(*args, "--db", win_rate_url, "--json").output)
        assert [(r["win_rate"], r["win_rate_se"], r["win_rate_lc"]) for r in rounds] == [
            (0.6, 0.05, 0.55),
            (0.7, 0.04, 0.62),
        ]
        assert all(r["judge_score"] is r["judge_score_se"] is None for r in rounds)
    stats = table_rows(invoke("db", "stats", "--db", win_rate_url).output)
    assert (stats["win rate"], stats["win rate SE"], stats["LC win rate"]) == (
        ["0.600", "0.700"],
        ["0.050", "0.040"],
        ["0.550", "0.620"],
    )
    assert "judge score" not in stats


def test_rounds_and_status_of_a_judge_score_run_show_the_score_and_its_se(judge_score_url):
    rows = table_rows(invoke("status", "--db", judge_score_url).output)
    assert rows["initial"][3] == "0.500 ± 0.030" and rows["1"][3] == "0.720 ± 0.020"
    assert "win rate ± SE" not in invoke("db", "rounds", "--db", judge_score_url).output
    rounds = json.loads(invoke("status", "--db", judge_score_url, "--json").output)
    assert [(r["judge_score"], r["judge_score_se"]) for r in rounds] == [(0.61, 0.03), (0.72, 0.02)]
    assert all(r["win_rate"] is None for r in rounds)


def test_status_of_an_accuracy_run_keeps_held_out_accuracy(seeded_url):
    result = invoke("status", "--db", seeded_url)
    assert "held-out acc" in result.output and "win rate" not in result.output
    rows = table_rows(result.output)
    assert (rows["initial"][3], rows["0"][3], rows["1"][3]) == ("0.250", "0.500", "0.750")
    rounds = json.loads(invoke("status", "--db", seeded_url, "--json").output)
    assert [r["heldout_accuracy"] for r in rounds] == [0.5, 0.75]
    assert all(r["win_rate"] is r["win_rate_lc"] is r["judge_score"] is None for r in rounds)


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
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), args
    # A URL that names no database is a usage error on --db (exit 2), as are out-of-range ids
    # and indexes, before any query.
    result = invoke("db", "pairs", "--db", "notaurl")
    assert result.exit_code == 2 and "--db: cannot open store notaurl" in result.output
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
    from db.pairs import PairFilter
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


def _conversation_pair(url: str) -> dict:
    """The first pair (as `db pairs --json` gives it) whose prompt is a conversation."""
    pairs = json.loads(invoke("db", "pairs", "--db", url, "--json").output)
    return next(p for p in pairs if p["prompt_messages"] is not None)


def test_show_prints_a_conversations_turns_escaped(conversation_url):
    from tests.conftest import CONVERSATION_TURNS

    pair = _conversation_pair(conversation_url)
    assert [(m["role"], m["content"]) for m in pair["prompt_messages"][:3]] == list(
        CONVERSATION_TURNS
    )
    result = invoke("db", "show", str(pair["id"]), "--db", conversation_url)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index(f"prompt ({pair['prompt_id']}), a conversation:")
    assert lines[start + 1 : start + 5] == [
        "  system: Answer with <digits> only.",
        "  user: Are you ready? [bold]yes[/bold]",  # Rich markup shown as written
        "  assistant: Ready.",
        f"  user: {pair['prompt']}",
    ]
    plain = invoke("db", "show", "1", "--db", conversation_url)
    assert "prompt (1): <script>alert(1)</script> 2+2=" in plain.output


def test_export_of_a_conversational_run_is_trls_conversational_format(conversation_url, tmp_path):
    out = tmp_path / "pairs.jsonl"
    result = invoke("db", "export", str(out), "--db", conversation_url)
    assert result.exit_code == 0 and "exported 12 pairs" in result.output, result.output
    rows = {r["pair_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    pair = _conversation_pair(conversation_url)
    row = rows[pair["id"]]
    assert row["prompt"] == pair["prompt_messages"] and row["prompt"][-1]["role"] == "user"
    assert row["chosen"] == [{"role": "assistant", "content": pair["chosen"]}]
    assert row["rejected"] == [{"role": "assistant", "content": pair["rejected"]}]
    # A plain prompt in a conversational export is one user turn.
    assert rows[1]["prompt"] == [{"role": "user", "content": "<script>alert(1)</script> 2+2="}]

    parquet = tmp_path / "pairs.parquet"
    result = invoke("db", "export", str(parquet), "--db", conversation_url, "--format", "parquet")
    assert result.exit_code == 0, result.output
    table = pq.read_table(parquet)
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    for column in ("prompt", "chosen", "rejected"):
        kind = table.schema.field(column).type
        assert pa.types.is_list(kind) and kind.value_type == message, (column, kind)
    by_id = dict(zip(table.column("pair_id").to_pylist(), table.to_pylist(), strict=True))
    assert by_id[pair["id"]]["prompt"] == row["prompt"]
    assert by_id[pair["id"]]["chosen"] == row["chosen"]

    # Filtered to plain prompts only, the export keeps the string format.
    plain = tmp_path / "plain.jsonl"
    result = invoke("db", "export", str(plain), "--db", conversation_url, "--search", "script")
    assert result.exit_code == 0 and "exported 4 pairs" in result.output, result.output
    assert all(
        isinstance(json.loads(line)["prompt"], str) for line in plain.read_text().splitlines()
    )


def test_a_plain_prompt_is_stored_as_sql_null_and_exports_as_text(seeded_url, tmp_path):
    from sqlalchemy import update

    from db.models import Prompt

    engine = make_engine(seeded_url)
    with engine.begin() as conn:  # what the loop's insert writes for a plain prompt
        conn.execute(update(Prompt).values(messages=None))
        assert (
            conn.execute(text("SELECT count(*) FROM prompts WHERE messages IS NOT NULL")).scalar()
            == 0
        )
    engine.dispose()
    out = tmp_path / "pairs.jsonl"
    assert invoke("db", "export", str(out), "--db", seeded_url).exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and all(isinstance(r["prompt"], str) for r in rows)
    assert all(isinstance(r["chosen"], str) for r in rows)
