"""The open-ended path end to end: configs/open-ended.yaml (scaled down: fewer held-out
prompts, the smaller tiny model, small rounds; the same task shape, judge and metric) through
the CLI; SIGKILLed mid-evaluation and resumed; the guards acting on win rates; a reference
file as the baseline; an API judge's evaluation through its cache and cost accounting."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from db import queries
from db.engine import make_engine, session_factory, transaction
from db.migrate import upgrade
from db.models import (
    REFERENCE_ROUND_INDEX,
    Checkpoint,
    EvalComparison,
    EvalResponse,
    EvalScore,
    JudgeCacheEntry,
    Metric,
    Round,
    Run,
)
from selfplay.config import parse_config
from selfplay.driver import ensure_round, next_policy
from selfplay.progress import SilentReporter
from selfplay.stages import Context
from tests.fake_openai_server import serve, stats
from tests.selfplay import test_loop_e2e

pytestmark = pytest.mark.heavy

ROOT = Path(__file__).parents[2]
SHIPPED = ROOT / "configs" / "open-ended.yaml"
HELDOUT = 48  # of the shipped file's 500 held-out prompts: 3 evaluation batches of 16
BATCH = 16
RUN = "open-ended-small"
_NUMBER = re.compile(r"\s*(?:A:)?\s*(-?\d+)")
_EXPRESSION = re.compile(r"Q:(\d+)([+-])(\d+)=")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped prompts with the first HELDOUT held-out lines kept (all train lines)."""
    cfg = yaml.safe_load(SHIPPED.read_text())
    lines = [json.loads(x) for x in (ROOT / cfg["task"]["path"]).read_text().splitlines()]
    heldout = [x for x in lines if x.get("split") == "heldout"]
    train = [x for x in lines if x.get("split") != "heldout"]
    path = tmp_path_factory.mktemp("data") / "open-ended.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in heldout[:HELDOUT] + train))
    return path


def scaled(tmp_path: Path, name: str, data: Path, **sections: dict) -> dict:
    """configs/open-ended.yaml on small rounds and the smaller tiny model (a short SFT of its
    own, seconds), 2 rounds; each section's keys update the config's."""
    cfg = yaml.safe_load(SHIPPED.read_text())
    cfg["run"].update(name=RUN, rounds=2, output_dir=str(tmp_path / name))
    cfg["task"].update(path=str(data), prompts_per_round=64)
    cfg["model"] = {
        "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 192},
        "sft": {"steps": 400, "target_accuracy": 0.1},
    }
    cfg["generation"].update(samples_per_prompt=4, prompts_per_batch=16)
    cfg["training"].update(batch_size=4, max_steps=60, epochs=8)
    cfg["evaluation"]["batch_size"] = BATCH
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def selfplay(*args: str, kill_at: str | None = None):
    """`python -m selfplay ARGS` in a subprocess (tests/selfplay/test_loop_e2e.py), its lines
    unwrapped (Rich wraps at the terminal's width: 80 columns without one)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "400")
        return test_loop_e2e.selfplay(*args, kill_at=kill_at)


def write(tmp_path: Path, name: str, cfg: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def right(prompt: str, response: str) -> bool:
    """What the tool critic decides, worked out here: the response's number is the value."""
    a, op, b = _EXPRESSION.fullmatch(prompt).groups()
    value = int(a) + int(b) if op == "+" else int(a) - int(b)
    match = _NUMBER.match(response)
    return match is not None and int(match.group(1)) == value


def state(db: Path, run: str = RUN) -> dict[str, Any]:
    """The run's evaluation content, keyed by (checkpoint round index, held-out index): no
    ids, no timestamps, no latencies."""
    engine = make_engine(f"sqlite:///{db}")
    with session_factory(engine)() as s:
        run_id = queries.get_run(s, run).id
        ckpts = {c.id: c for c in s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id))}
        rows = s.scalars(select(EvalResponse).where(EvalResponse.run_id == run_id)).all()
        key = {r.id: (ckpts[r.checkpoint_id].round_index, r.heldout_index) for r in rows}
        scores = s.scalars(select(EvalScore).where(EvalScore.response_id.in_(list(key)))).all()
        comparisons = s.scalars(
            select(EvalComparison).where(EvalComparison.response_id.in_(list(key)))
        ).all()
        metrics = s.scalars(
            select(Metric).where(Metric.run_id == run_id, Metric.stage.in_(("eval", "guard")))
        ).all()
        rounds = s.scalars(select(Round).where(Round.run_id == run_id)).all()
        out = {
            "responses": {
                key[r.id]: (r.prompt, r.text, r.num_tokens, r.finish_reason) for r in rows
            },
            "scores": {
                (*key[x.response_id], x.judge, x.repeat): (x.status, x.score, x.critique, x.error)
                for x in scores
            },
            "comparisons": {
                (key[x.response_id], key[x.baseline_id], x.judge, x.repeat): (
                    x.status,
                    x.outcome,
                    x.critique,
                    x.error,
                )
                for x in comparisons
            },
            "metrics": {(m.round_index, m.stage, m.step, m.name): m.value for m in metrics},
            "heldout_score": {c.round_index: c.heldout_score for c in ckpts.values()},
            "policies": {r.index: ckpts[r.policy_checkpoint_id].round_index for r in rounds},
            "statuses": {r.index: r.status for r in rounds},
        }
    engine.dispose()
    return out


def count(st: dict, table: str, round_index: int) -> int:
    return sum(k[0] == round_index for k in st[table])


def outcome(mine: bool, theirs: bool) -> float:
    return 1.0 if mine > theirs else 0.0 if mine < theirs else 0.5


def win_rate_of(st: dict, round_index: int, baseline: int) -> float:
    """The win rate worked out from the stored responses: pointwise, ties half."""
    res = st["responses"]
    wins = [
        outcome(right(*res[(round_index, i)][:2]), right(*res[(baseline, i)][:2]))
        for i in range(HELDOUT)
    ]
    return sum(wins) / len(wins)


def line_figures(stdout: str, prefix: str) -> tuple[float, float, float]:
    m = re.search(
        rf"^{prefix}.*held-out win rate (\d\.\d{{3}}) ± (\d\.\d{{3}}) \(LC (\d\.\d{{3}})\)",
        stdout,
        re.M,
    )
    assert m, (prefix, stdout)
    return tuple(float(x) for x in m.groups())


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, data_file: Path) -> tuple[Any, dict, dict]:
    """One uninterrupted run of the scaled config (rolling back after a round without a new
    best win rate): (the CLI's result, its evaluation state, the config)."""
    tmp = tmp_path_factory.mktemp("clean")
    cfg = scaled(tmp, "clean", data_file, guards={"patience": 1, "on_plateau": "rollback"})
    proc = selfplay("run", str(write(tmp, "clean", cfg)))
    assert proc.returncode == 0, proc.stderr
    return proc, state(tmp / "clean" / "selfplay.db"), cfg


def test_the_shipped_config_is_the_open_ended_path():
    cfg = yaml.safe_load(SHIPPED.read_text())
    parsed = parse_config(cfg)
    assert parsed.task.name == "jsonl" and parsed.judge.name == "tool"
    assert parsed.evaluation.metric == "win_rate" and parsed.evaluation.reference is None
    assert cfg["algorithm"] == "dno" and parsed.training.nll_weight > 0
    lines = [json.loads(x) for x in (ROOT / cfg["task"]["path"]).read_text().splitlines()]
    heldout = [x for x in lines if x.get("split") == "heldout"]
    train = [x for x in lines if x.get("split") != "heldout"]
    assert len(heldout) == 500 and not any("answer" in x for x in heldout)
    assert train and all(x["answer"] == f"A:{eval(x['prompt'][2:-1])}" for x in train)
    assert not {x["prompt"] for x in heldout} & {x["prompt"] for x in train}


def test_two_rounds_judged_by_win_rate_against_the_initial_policy(clean):
    proc, st, cfg = clean
    heldout = [p for p, *_ in (st["responses"][(-1, i)] for i in range(HELDOUT))]
    for r in (-1, 0, 1):  # one response per held-out prompt from each checkpoint
        assert [st["responses"][(r, i)][0] for i in range(HELDOUT)] == heldout
    # The tool critic scored every response, 1 exactly when its number is the value; no
    # comparisons (it has no `compare`).
    assert len(st["scores"]) == 3 * HELDOUT and st["comparisons"] == {}
    for (r, i, judge, _), (status, score, critique, _) in st["scores"].items():
        assert judge == "tool" and status == "ok" and critique.startswith("python says")
        assert score == float(right(*st["responses"][(r, i)][:2])), critique
    m = st["metrics"]
    assert st["heldout_score"][-1] == 0.5 and (-1, "eval", 0, "win_rate") not in m
    for r in (0, 1):
        wr = m[(r, "eval", 0, "win_rate")]
        assert wr == pytest.approx(win_rate_of(st, r, -1))
        assert m[(r, "eval", 0, "win_rate_n")] == HELDOUT
        assert 0 < m[(r, "eval", 0, "win_rate_se")] < 0.2 or wr in (0.0, 0.5, 1.0)
        assert 0 <= m[(r, "eval", 0, "win_rate_lc")] <= 1
        assert st["heldout_score"][r] == wr
        assert (r, "guard", 0, "kl_sft") in m
        shown = line_figures(proc.stdout, f"round {r}: ")
        stored = (wr, m[(r, "eval", 0, "win_rate_se")], m[(r, "eval", 0, "win_rate_lc")])
        assert shown == tuple(round(x, 3) for x in stored)
    assert "initial policy: held-out win rate 0.500" in proc.stdout
    final = line_figures(proc.stdout, "done: 2 rounds, final")
    assert final[0] == round(m[(1, "eval", 0, "win_rate")], 3)
    best = max((-1, 0, 1), key=lambda r: (st["heldout_score"][r], -r))
    name = "SFT" if best == -1 else f"round {best}"
    assert re.search(rf"^best checkpoint: {name} \(held-out win rate", proc.stdout, re.M)
    # guards.patience 1, rollback, read the win rate: round 1 starts from round 0's output
    # only if it beat the initial policy's 0.5.
    assert st["policies"] == {0: -1, 1: 0 if st["heldout_score"][0] > 0.5 else -1}


# SIGKILLs at the n-th evaluation commit of each process (3 batches of 16 held-out prompts):
# (SELFPLAY_KILL_AT, what the store holds after it).
KILLS = [
    ("evaluating:2", {"responses": {-1: 32}}),  # the baseline's sampling, before round 0
    ("evaluating:4", {"responses": {-1: 48, 0: 32}}),  # round 0's sampling
    ("evaluating:5", {"scores": {-1: 48, 0: 16}}),  # round 0's scoring
    ("evaluating:4", {"scores": {0: 48}}),  # the guard's commit, round 0 not yet done
    ("evaluating:2", {"responses": {1: 32}}),  # round 1's sampling
]


def test_sigkill_mid_evaluation_then_resume_equals_the_uninterrupted_run(
    tmp_path, data_file, clean
):
    cfg = scaled(tmp_path, "crashy", data_file, guards={"patience": 1, "on_plateau": "rollback"})
    path = write(tmp_path, "crashy", cfg)
    db = tmp_path / "crashy" / "selfplay.db"
    for kill_at, expected in KILLS:
        proc = selfplay("run", str(path), kill_at=kill_at)
        assert proc.returncode == -signal.SIGKILL, (kill_at, proc.stderr)
        st = state(db)
        for table, counts in expected.items():
            for r, n in counts.items():
                assert count(st, table, r) == n, (kill_at, table, r)
    assert st["statuses"] == {0: "done", 1: "evaluating"}
    resumed = selfplay("run", str(path))
    assert resumed.returncode == 0, resumed.stderr
    proc, expected, _ = clean
    got = state(db)
    for key in ("responses", "scores", "comparisons", "metrics", "heldout_score", "policies"):
        assert got[key] == expected[key], key
    assert line_figures(resumed.stdout, "round 1: ") == line_figures(proc.stdout, "round 1: ")


def test_a_round_that_does_not_beat_the_best_win_rate_stops_the_run(tmp_path, data_file):
    # Greedy evaluation and a learning rate too small to move a float32 weight: round 0's
    # responses are the initial policy's, every prompt a tie, win rate 0.5, no new best.
    cfg = scaled(
        tmp_path,
        "plateau",
        data_file,
        training={"lr": 1e-12},
        evaluation={"temperature": 0.0},
        guards={"patience": 1, "on_plateau": "stop"},
    )
    proc = selfplay("run", str(write(tmp_path, "plateau", cfg)))
    assert proc.returncode == 0, proc.stderr
    st = state(tmp_path / "plateau" / "selfplay.db")
    assert st["statuses"] == {0: "done"}  # round 1 never created
    assert [st["responses"][(0, i)] for i in range(HELDOUT)] == [
        st["responses"][(-1, i)] for i in range(HELDOUT)
    ]
    assert st["metrics"][(0, "eval", 0, "win_rate_tie_share")] == 1.0
    assert st["heldout_score"][0] == 0.5
    assert (
        "stopping before round 1: no new best held-out win rate for 1 rounds "
        "(guards.on_plateau: stop)" in proc.stdout
    )
    assert re.search(r"^best checkpoint: SFT \(held-out win rate 0\.500", proc.stdout, re.M)


def _guard_store(tmp_path: Path, win_rates: list[float], accuracies: list[float | None]):
    """A run whose checkpoints -1, 0, 1, … carry these win rates as heldout_score (the value
    evaluation stores for metric win_rate) and these accuracies, all rounds done; (engine,
    a Context of that run for given guards)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'guards.db'}")
    upgrade(engine)
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        run = Run(name="g", config={})
        s.add(run)
        s.flush()
        ckpts = []
        for i, (wr, acc) in enumerate(zip(win_rates, accuracies, strict=True)):
            c = Checkpoint(
                run_id=run.id,
                round_index=i - 1,
                path=str(tmp_path / f"ckpt{i - 1}"),
                heldout_accuracy=acc,
                heldout_score=wr,
            )
            s.add(c)
            s.flush()
            ckpts.append(c)
        for i in range(len(ckpts) - 1):
            s.add(
                Round(
                    run_id=run.id,
                    index=i,
                    status="done",
                    policy_checkpoint_id=ckpts[i].id,
                    output_checkpoint_id=ckpts[i + 1].id,
                )
            )
        run_id = run.id

    def context(**guards: object) -> Context:
        cfg = parse_config({"run": {"output_dir": str(tmp_path)}, "guards": guards})
        return Context(cfg, sessions, run_id, SilentReporter())

    return engine, context


@pytest.mark.parametrize("accuracies", [[None] * 4, [0.9, 0.1, 0.2, 0.95]])
def test_patience_reads_the_win_rate_not_the_accuracy(tmp_path, accuracies):
    # Round 0's checkpoint has the best win rate (0.62); rounds 1 and 2 fall short of it.
    engine, context = _guard_store(tmp_path, [0.5, 0.62, 0.55, 0.6], accuracies)
    try:
        assert next_policy(context(patience=1), 3).round_index == 0  # rollback
        assert ensure_round(context(patience=1, on_plateau="stop"), 3) is None
        assert next_policy(context(patience=3, on_plateau="stop"), 3).round_index == 2
        ctx = context()
        with ctx.sessions() as s:
            assert queries.best_checkpoint(s, ctx.run_id).round_index == 0
    finally:
        engine.dispose()


def test_win_rate_against_a_reference_file(tmp_path, data_file):
    heldout = [json.loads(x)["prompt"] for x in data_file.read_text().splitlines()[:HELDOUT]]
    # Right on even prompts, wrong (the values are never negative) on odd ones.
    responses = [f"A:{eval(p[2:-1])}" if i % 2 == 0 else "A:-1" for i, p in enumerate(heldout)]
    reference = tmp_path / "reference.jsonl"
    reference.write_text(
        "".join(
            json.dumps({"prompt": p, "response": r}) + "\n"
            for p, r in zip(heldout, responses, strict=True)
        )
    )
    cfg = scaled(tmp_path, "ref", data_file, evaluation={"reference": str(reference)})
    cfg["run"]["rounds"] = 1
    proc = selfplay("run", str(write(tmp_path, "ref", cfg)))
    assert proc.returncode == 0, proc.stderr
    st = state(tmp_path / "ref" / "selfplay.db")
    ref = REFERENCE_ROUND_INDEX
    assert [st["responses"][(ref, i)][1] for i in range(HELDOUT)] == responses
    # The tool critic scored the file's responses too: 1, 0, 1, 0, …
    assert [st["scores"][(ref, i, "tool", 0)][1] for i in range(HELDOUT)] == [
        float(i % 2 == 0) for i in range(HELDOUT)
    ]
    assert st["heldout_score"][ref] is None
    # The initial policy now has a measured win rate, as has round 0.
    for r in (-1, 0):
        wr = st["metrics"][(r, "eval", 0, "win_rate")]
        assert wr == pytest.approx(win_rate_of(st, r, ref)) and st["heldout_score"][r] == wr
    initial = line_figures(proc.stdout, "initial policy: ")
    assert initial[0] == round(st["heldout_score"][-1], 3)
    assert "the win-rate baseline itself" not in proc.stdout
    assert line_figures(proc.stdout, "round 0: ")[0] == round(st["heldout_score"][0], 3)


@pytest.fixture(scope="module")
def api_runs(tmp_path_factory: pytest.TempPathFactory, data_file: Path) -> dict[str, Any]:
    """Two 1-round runs on one store, judged by the api judge against the local fake server:
    the second asks the same requests, so its cache answers them. Their round-0 evaluation
    comparisons, the server's answered-request count after each run, the cache's cost."""
    tmp = tmp_path_factory.mktemp("api")
    db = tmp / "api.db"
    answered = {}
    with pytest.MonkeyPatch.context() as mp, serve() as url:
        mp.setenv("OPENAI_API_KEY", "sk-eval")
        api = dict(
            model="fake-judge", base_url=url, input_cost_per_mtok=1.0, output_cost_per_mtok=4.0
        )
        for name in ("first", "second"):
            cfg = scaled(
                tmp,
                name,
                data_file,
                judge={"name": "api", "api": api, "meta_eval_prompts": 0},
                store={"url": f"sqlite:///{db}"},
            )
            cfg["run"].update(name=name, rounds=1)
            # Two runs of one config on one store train slightly different checkpoints from
            # identical pairs (kl_sft 0.2372 vs 0.2378), so a few of the second's evaluation
            # responses would be new to the cache: a learning rate too small to move a
            # float32 weight makes both runs' round-0 responses the same.
            cfg["training"]["lr"] = 1e-12
            proc = selfplay("run", str(write(tmp, name, cfg)))
            assert proc.returncode == 0, proc.stderr
            answered[name] = stats(url)["answered"]
    engine = make_engine(f"sqlite:///{db}")
    with session_factory(engine)() as s:
        rows = {}
        for name in answered:
            run_id = queries.get_run(s, name).id
            rows[name] = s.scalars(
                select(EvalComparison)
                .join(EvalResponse, EvalResponse.id == EvalComparison.response_id)
                .where(EvalResponse.run_id == run_id)
                .order_by(EvalResponse.heldout_index)
            ).all()
            for row in rows[name]:
                s.expunge(row)
        cache_cost = s.scalar(select(func.sum(JudgeCacheEntry.cost)))
    engine.dispose()
    return {"rows": rows, "answered": answered, "cache_cost": cache_cost}


def test_an_api_judges_evaluation_is_costed_then_served_from_its_cache(api_runs):
    answered = api_runs["answered"]
    assert answered["first"] > 0 and answered["second"] == answered["first"]  # none re-asked
    first, second = api_runs["rows"]["first"], api_runs["rows"]["second"]
    # Round 0 against the initial policy, both orders in one row per held-out prompt.
    assert len(first) == len(second) == HELDOUT
    assert all(c.status == "ok" and c.judge == "api" for c in first + second)
    assert all(c.tokens > 0 and c.cost > 0 for c in first)  # fresh: charged
    assert all(not c.tokens and c.cost == 0.0 for c in second)  # cached: free
    assert [c.outcome for c in second] == [c.outcome for c in first]
    assert api_runs["cache_cost"] >= sum(c.cost for c in first)


def test_a_cached_evaluation_comparison_says_so_in_its_trace(api_runs):
    assert all(c.trace.get("cached") for c in api_runs["rows"]["second"])
    assert not any(c.trace.get("cached") for c in api_runs["rows"]["first"])
