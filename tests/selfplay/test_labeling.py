"""`selfplay judge`: a JSONL of prompts and responses labelled into the store, resumably."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select
from typer.testing import CliRunner

from db import queries
from db.engine import make_engine, session_factory, transaction
from db.migrate import upgrade
from db.models import Checkpoint, Judgment, Pair, Prompt, Response, Round, Run
from selfplay.cli import app

runner = CliRunner()

LINES = [
    {"prompt": "Q:2+2=", "answer": 4, "response": "A:4"},
    {"prompt": "Q:9-3=", "answer": "6", "responses": ["A:6", "A:5", "the answer is 6"]},
    None,  # a blank line: skipped, line numbers still count it
    {"prompt": "Q:1+1=", "answer": "2", "responses": ["A:3", "A:2"], "source": "ignored"},
]


def write_jsonl(path: Path, lines: list[dict | str | None]) -> Path:
    text = [
        "" if line is None else line if isinstance(line, str) else json.dumps(line)
        for line in lines
    ]
    path.write_text("\n".join(text) + "\n")
    return path


def write_config(tmp_path: Path, db_url: str, **sections: dict) -> Path:
    data = {
        "run": {"name": "ext", "output_dir": str(tmp_path / "out")},
        "store": {"url": db_url},
        "task": {"heldout_size": 10},
        **sections,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def flat(output: str) -> str:
    """CLI output with Rich's line wrapping undone."""
    return " ".join(output.split())


def counts(db_url: str) -> dict[str, int]:
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        out = {
            m.__tablename__: s.scalar(select(func.count()).select_from(m)) or 0
            for m in (Run, Checkpoint, Round, Prompt, Response, Judgment, Pair)
        }
    engine.dispose()
    return out


def test_judge_labels_a_jsonl_into_the_store_and_db_commands_show_it(tmp_path, db_url):
    data = write_jsonl(tmp_path / "data.jsonl", LINES)
    config = write_config(tmp_path, db_url)
    result = runner.invoke(app, ["judge", str(config), str(data), "--pairs"])
    assert result.exit_code == 0, result.output
    assert "3 prompts, 6 responses (6 new); judged 6 now, 0 failed" in flat(result.output)
    assert "pairs" in result.output

    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        run = queries.get_run(s, "ext")
        ckpt = queries.get_checkpoint(s, run.id, -1)
        assert ckpt.path == f"external:{data.resolve()}"
        rnd = queries.get_round(s, run.id, 0)
        assert rnd.status == "done" and rnd.policy_checkpoint_id == ckpt.id
        prompts = s.scalars(select(Prompt).where(Prompt.round_id == rnd.id)).all()
        assert sorted((p.index, p.text, p.answer) for p in prompts) == [
            (0, "Q:2+2=", "4"),
            (1, "Q:9-3=", "6"),
            (3, "Q:1+1=", "2"),
        ]
        rows = s.execute(
            select(Prompt.index, Response, Judgment)
            .join(Response, Response.prompt_id == Prompt.id)
            .join(Judgment, Judgment.response_id == Response.id)
            .order_by(Prompt.index, Response.sample_index)
        ).all()
        got = [(i, r.sample_index, r.text, j.judge, j.score) for i, r, j in rows]
        assert got == [
            (0, 0, "A:4", "verifier", 1.0),
            (1, 0, "A:6", "verifier", 1.0),
            (1, 1, "A:5", "verifier", 0.0),
            (1, 2, "the answer is 6", "verifier", 0.0),
            (3, 0, "A:3", "verifier", 0.0),
            (3, 1, "A:2", "verifier", 1.0),
        ]
        for _, r, j in rows:
            assert r.token_ids == [] and r.logprob == 0.0 and r.finish_reason == "external"
            assert r.num_tokens == len(r.text.split()) and r.checkpoint_id == ckpt.id
            assert j.critique  # the verifier's critique ("expected 6, got 5", ...)
        pairs = s.scalars(select(Pair).where(Pair.round_id == rnd.id)).all()
        by_id = {r.id: r for _, r, _ in rows}
        # max_min: best vs worst per prompt (a seeded pick among the equally wrong), ties
        # dropped; prompt 0 has one response, so no pair.
        got = sorted((by_id[p.chosen_id].text, by_id[p.rejected_id].text) for p in pairs)
        assert got[0] == ("A:2", "A:3") and len(got) == 2
        assert got[1] in (("A:6", "A:5"), ("A:6", "the answer is 6"))
        assert all(p.builder == "max_min" for p in pairs)
    engine.dispose()

    stats = runner.invoke(app, ["db", "stats", "--db", db_url, "--run", "ext", "--json"])
    assert stats.exit_code == 0, stats.output
    (row,) = json.loads(stats.output)
    assert row["responses"] == 6 and row["pairs"] == 2 and row["prompts"] == 3
    listed = runner.invoke(app, ["db", "pairs", "--db", db_url, "--run", "ext", "--json"])
    assert listed.exit_code == 0, listed.output
    assert {p["chosen"] for p in json.loads(listed.output)} == {"A:2", "A:6"}

    # The same command again: nothing stored, judged or paired twice.
    before = counts(db_url)
    again = runner.invoke(app, ["judge", str(config), str(data), "--pairs"])
    assert again.exit_code == 0, again.output
    assert "(0 new); judged 0 now" in flat(again.output)
    assert counts(db_url) == before


def test_a_bad_line_is_named_and_nothing_stored_is_lost(tmp_path, db_url):
    config = write_config(tmp_path, db_url)
    data = write_jsonl(tmp_path / "data.jsonl", LINES)
    assert runner.invoke(app, ["judge", str(config), str(data)]).exit_code == 0
    stored = counts(db_url)

    bad_lines = [
        ('{"prompt": "Q:3+3=", "response": "A:6"', "invalid JSON"),
        ({"prompt": "Q:3+3="}, "give exactly one of 'response'"),
        ({"prompt": "Q:3+3=", "responses": ["A:6", 6]}, "field 'responses'[1] must be a string"),
        ({"prompt": "", "response": "A:6"}, "field 'prompt' must be a non-empty string"),
        ([1, 2], "expected a JSON object"),
    ]
    for bad, problem in bad_lines:
        # Lines 1–4 are the good ones (already stored); the file grows by a good and a bad line.
        grown = write_jsonl(tmp_path / "data.jsonl", [*LINES, LINES[0], bad])
        result = runner.invoke(app, ["judge", str(config), str(grown)])
        assert result.exit_code == 2, result.output
        assert f"line 6: {problem}" in flat(result.output), result.output
        assert "Traceback" not in result.output
        assert counts(db_url) == stored  # the whole file is checked before anything is stored

    # The fixed file resumes: only the new line is stored and judged.
    write_jsonl(tmp_path / "data.jsonl", [*LINES, LINES[0]])
    result = runner.invoke(app, ["judge", str(config), str(data)])
    assert result.exit_code == 0, result.output
    assert "4 prompts, 7 responses (1 new); judged 1 now" in flat(result.output)


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.mark.parametrize(
    ("sections", "problem", "store_created"),
    [
        (
            {"judge": {"name": "reward_model", "reward_model": {"path": "/no/such/rm"}}},
            "error: judge.reward_model.path: /no/such/rm: no such directory",
            False,
        ),
        (
            {"task": {"name": "jsonl", "path": "/no/such/prompts.jsonl"}},
            "error: cannot read /no/such/prompts.jsonl: [Errno 2] No such file or directory: "
            "'/no/such/prompts.jsonl'",
            False,
        ),
        (  # a judge is built on the store's sessions: the store exists, its run row not
            {"judge": {"name": "exploding_judge:Exploding"}},
            "error: judge.name: the factory of judge 'exploding_judge:Exploding' raised "
            "RuntimeError: cannot reach my model",
            True,
        ),
    ],
)
def test_a_bad_judge_or_task_exits_2_before_the_run_is_written(
    tmp_path, exploding_judge, sections, problem, store_created
):
    store = tmp_path / "out" / "selfplay.db"
    config = write_config(tmp_path, f"sqlite:///{store}", **sections)
    data = write_jsonl(tmp_path / "data.jsonl", LINES)
    result = runner.invoke(app, ["judge", str(config), str(data)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert _one_error_line(result.output) == problem
    assert store.exists() == store_created
    if store_created:  # fixing the judge then runs, not "a changed config"
        assert counts(f"sqlite:///{store}")["runs"] == 0


def test_a_malformed_line_exits_2_with_one_line_before_the_store_is_created(tmp_path):
    store = tmp_path / "out" / "selfplay.db"
    config = write_config(tmp_path, f"sqlite:///{store}")
    data = write_jsonl(tmp_path / "data.jsonl", [LINES[0], '{"prompt": "Q:3+3="'])
    result = runner.invoke(app, ["judge", str(config), str(data)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert line.startswith(f"error: {data}, line 2: invalid JSON")
    assert not store.exists()


def test_a_changed_line_or_a_loop_run_is_refused(tmp_path, db_url):
    config = write_config(tmp_path, db_url)
    data = write_jsonl(tmp_path / "data.jsonl", LINES)
    assert runner.invoke(app, ["judge", str(config), str(data)]).exit_code == 0
    changed = [LINES[0], {**LINES[1], "responses": ["A:6", "A:7", "x"]}]
    write_jsonl(data, changed)
    result = runner.invoke(app, ["judge", str(config), str(data)])
    assert result.exit_code == 2 and "line 2: response 1 differs" in flat(result.output)

    engine = make_engine(db_url)
    upgrade(engine)
    with transaction(session_factory(engine)) as s:
        run = Run(name="loop", config={})
        s.add(run)
        s.flush()
        s.add(Checkpoint(run_id=run.id, round_index=-1, path="/ckpt/sft"))
    engine.dispose()
    result = runner.invoke(app, ["judge", str(config), str(data), "--run", "loop"])
    assert result.exit_code == 2 and "run holds a loop run" in flat(result.output)
    other = write_jsonl(tmp_path / "other.jsonl", LINES)
    result = runner.invoke(app, ["judge", str(config), str(other)])
    assert result.exit_code == 2 and "label this file under another run" in flat(result.output)


COUNTING_JUDGE = '''
import json
from selfplay.judges import Verdict


class CountingJudge:
    """Scores a response by its length and logs every response it is asked to judge."""

    name = "counting"

    def __init__(self, cfg, env):
        self.log = cfg.options["log"]

    def judge(self, items):
        with open(self.log, "a") as f:
            for item in items:
                f.write(json.dumps(item.response) + "\\n")
        return [Verdict("ok", score=float(len(i.response)), critique="length") for i in items]
'''


@pytest.mark.heavy
def test_killed_mid_judging_the_rerun_judges_nothing_twice(tmp_path, db_url):
    (tmp_path / "counting_judge.py").write_text(COUNTING_JUDGE)
    log = tmp_path / "judged.log"
    config = write_config(
        tmp_path,
        db_url,
        judge={"name": "counting_judge:CountingJudge", "options": {"log": str(log)}},
        # One judge chunk per prompts_per_batch × samples_per_prompt = 2 responses.
        generation={"prompts_per_batch": 2, "samples_per_prompt": 1},
    )
    data = write_jsonl(tmp_path / "data.jsonl", LINES)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SELFPLAY_KILL_AT": "judging:1"}

    def judge() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "selfplay", "judge", str(config), str(data)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    killed = judge()
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert counts(db_url)["judgments"] == 2
    env.pop("SELFPLAY_KILL_AT")
    resumed = judge()
    assert resumed.returncode == 0, resumed.stderr
    assert "(0 new); judged 4 now" in resumed.stdout
    judged = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(judged) == sorted(["A:4", "A:6", "A:5", "the answer is 6", "A:3", "A:2"])
    assert counts(db_url)["judgments"] == 6


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_conversation_line_is_stored_with_its_turns(tmp_path, db_url):
    turns = [{"role": "system", "content": "Digits only."}, {"role": "user", "content": "Q:2+2="}]
    data = write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"prompt": turns, "answer": 4, "responses": ["A:4", "A:5"]},
            {"messages": [*turns, {"role": "assistant", "content": "A:4"}], "response": "A:4"},
            {"prompt": "Q:1+1=", "response": "A:2"},
        ],
    )
    config = write_config(tmp_path, db_url)
    for _ in range(2):  # the second run finds every line unchanged
        result = runner.invoke(app, ["judge", str(config), str(data)])
        assert result.exit_code == 0, result.output
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        stored = s.execute(
            select(Prompt.index, Prompt.text, Prompt.messages).order_by(Prompt.index)
        )
        assert stored.all() == [(0, "Q:2+2=", turns), (1, "Q:2+2=", turns), (2, "Q:1+1=", None)]
    engine.dispose()
