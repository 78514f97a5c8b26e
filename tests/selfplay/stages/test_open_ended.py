"""Open-ended evaluation: held-out prompts without answers scored by win rate against the
initial policy or a reference file (pairwise or pointwise judges), or by judge score; the
rows it stores, what a re-run redoes, and the metric driving the best checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from db import queries
from db.engine import transaction
from db.models import (
    REFERENCE_ROUND_INDEX,
    Checkpoint,
    EvalComparison,
    EvalResponse,
    EvalScore,
    Metric,
    Round,
)
from selfplay.config import ConfigError, parse_config
from selfplay.stages.evaluate import check_evaluation, evaluate_checkpoint, resolve_metric
from selfplay.tasks import make_task
from selfplay.tasks.base import Prompt

HELDOUT = [f"Q:{a}+{b}=" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 1), (2, 2)]]

PAIRWISE_JUDGE = """
from selfplay.judges import BaseJudge, Comparison, Verdict


class Longer(BaseJudge):
    '''Pointwise: the length; pairwise: the longer response wins, ties half.'''

    name = "longer"

    def __init__(self, cfg, env):
        self.compared = 0

    def judge(self, items):
        return [Verdict("ok", score=float(len(i.response))) for i in items]

    def compare(self, items):
        self.compared += len(items)
        out = []
        for i in items:
            a, b = len(i.first), len(i.second)
            out.append(Comparison("ok", prob=1.0 if a > b else 0.0 if a < b else 0.5))
        return out
"""


@pytest.fixture
def pairwise_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "longer_judge.py").write_text(PAIRWISE_JUDGE)
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    """Train prompts with answers, held-out prompts without: an open-ended held-out set."""
    lines = [{"prompt": f"Q:{i}+1=", "answer": i + 1} for i in range(8)]
    lines += [{"prompt": p, "split": "heldout"} for p in HELDOUT]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _second_checkpoint(store) -> int:
    """A round-0 checkpoint of the same weights as the initial policy: its evaluation
    responses are other samples (another seed), so the judge has something to compare."""
    with transaction(store.sessions) as s:
        sft = queries.get_checkpoint(s, store.run_id, -1)
        ckpt = Checkpoint(run_id=store.run_id, round_index=0, path=sft.path)
        s.add(ckpt)
        s.flush()
        return ckpt.id


def _texts(store, checkpoint_id: int) -> dict[int, str]:
    with store.sessions() as s:
        rows = s.execute(
            select(EvalResponse.heldout_index, EvalResponse.text).where(
                EvalResponse.checkpoint_id == checkpoint_id
            )
        ).all()
    return dict(rows)


def _eval_metrics(store, round_index: int) -> dict[str, float]:
    with store.sessions() as s:
        rows = s.scalars(
            select(Metric).where(Metric.stage == "eval", Metric.round_index == round_index)
        ).all()
    return {m.name: m.value for m in rows}


def _longer(a: str, b: str) -> float:
    return 1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5


def test_win_rate_against_the_initial_policy_by_pointwise_scores(
    round_store, prompts_file, length_judge
):
    store = round_store(
        judge={"name": "length_judge:Length"},
        task={"name": "jsonl", "path": str(prompts_file)},
    )
    ctx = store.context()
    try:
        assert evaluate_checkpoint(ctx, _sft_id(store), -1) == 0.5  # its own baseline
        ckpt = _second_checkpoint(store)
        score = evaluate_checkpoint(ctx, ckpt, 0)
    finally:
        ctx.close()
    mine, theirs = _texts(store, ckpt), _texts(store, _sft_id(store))
    assert sorted(mine) == sorted(theirs) == list(range(len(HELDOUT)))
    outcomes = [_longer(mine[i], theirs[i]) for i in range(len(HELDOUT))]
    figures = _eval_metrics(store, 0)
    assert score == figures["win_rate"] == pytest.approx(sum(outcomes) / len(outcomes))
    assert figures["win_rate_n"] == len(HELDOUT) and figures["win_rate_failed"] == 0
    assert figures["win_rate_tie_share"] == outcomes.count(0.5) / len(outcomes)
    assert figures["eval_mean_chars"] == sum(map(len, mine.values())) / len(mine)
    with store.sessions() as s:
        # Pointwise: each response scored once (the baseline's reused by every round), no
        # comparisons; the checkpoint keeps its metric value.
        assert len(s.scalars(select(EvalScore)).all()) == 2 * len(HELDOUT)
        assert s.scalars(select(EvalComparison)).all() == []
        assert s.get(Checkpoint, ckpt).heldout_score == score
    assert _eval_metrics(store, -1) == {}  # the baseline is not judged against itself


def _sft_id(store) -> int:
    with store.sessions() as s:
        return queries.get_checkpoint(s, store.run_id, -1).id


def test_a_pairwise_judge_compares_in_both_orders_and_a_rerun_compares_nothing(
    round_store, prompts_file, pairwise_judge
):
    store = round_store(
        judge={"name": "longer_judge:Longer"},
        task={"name": "jsonl", "path": str(prompts_file)},
        evaluation={"batch_size": 4, "temperature": 1.0},
    )
    ctx = store.context()
    try:
        evaluate_checkpoint(ctx, _sft_id(store), -1)
        ckpt = _second_checkpoint(store)
        score = evaluate_checkpoint(ctx, ckpt, 0)
        assert ctx.engines.judge.compared == 2 * len(HELDOUT)  # both orders
        with transaction(store.sessions) as s:
            s.get(Checkpoint, ckpt).heldout_score = None  # as if it crashed after the rows
        assert evaluate_checkpoint(ctx, ckpt, 0) == score
        assert ctx.engines.judge.compared == 2 * len(HELDOUT)  # nothing judged again
    finally:
        ctx.close()
    mine, theirs = _texts(store, ckpt), _texts(store, _sft_id(store))
    with store.sessions() as s:
        rows = s.scalars(select(EvalComparison)).all()
        assert s.scalars(select(EvalScore)).all() == []
    assert len(rows) == len(HELDOUT)
    for row in rows:
        assert row.status == "ok" and set(row.trace) == {"p_ab", "p_ba", "position_flip"}
    expected = [_longer(mine[i], theirs[i]) for i in range(len(HELDOUT))]
    assert score == pytest.approx(sum(expected) / len(expected))


def test_a_rerun_after_losing_a_batch_regenerates_the_same_responses(
    round_store, prompts_file, length_judge
):
    store = round_store(
        judge={"name": "length_judge:Length"},
        task={"name": "jsonl", "path": str(prompts_file)},
        evaluation={"batch_size": 4, "temperature": 1.0},
    )
    ctx = store.context()
    try:
        evaluate_checkpoint(ctx, _sft_id(store), -1)
        ckpt = _second_checkpoint(store)
        first = evaluate_checkpoint(ctx, ckpt, 0)
        before = _texts(store, ckpt)
        # A crash before the second batch (prompts 4…5) and its scores were stored.
        with transaction(store.sessions) as s:
            s.execute(
                delete(EvalResponse).where(
                    EvalResponse.checkpoint_id == ckpt, EvalResponse.heldout_index >= 4
                )
            )
            s.execute(delete(Metric).where(Metric.stage == "eval"))
            s.get(Checkpoint, ckpt).heldout_score = None
        assert evaluate_checkpoint(ctx, ckpt, 0) == first
    finally:
        ctx.close()
    assert _texts(store, ckpt) == before


def test_win_rate_against_a_reference_file(round_store, prompts_file, tmp_path, length_judge):
    reference = tmp_path / "reference.jsonl"
    answers = {p: "A:" + "9" * (i % 3) for i, p in enumerate(HELDOUT)}
    reference.write_text(
        "".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in answers.items())
    )
    store = round_store(
        judge={"name": "length_judge:Length"},
        task={"name": "jsonl", "path": str(prompts_file)},
        evaluation={"reference": str(reference)},
    )
    ctx = store.context()
    try:
        initial = evaluate_checkpoint(ctx, _sft_id(store), -1)
    finally:
        ctx.close()
    with store.sessions() as s:
        ref = queries.get_checkpoint(s, store.run_id, REFERENCE_ROUND_INDEX)
        assert ref.path == f"reference:{reference}" and ref.heldout_score is None
        assert queries.best_checkpoint(s, store.run_id).round_index == -1
    assert _texts(store, ref.id) == dict(enumerate(answers.values()))
    mine = _texts(store, _sft_id(store))
    expected = [_longer(mine[i], r) for i, r in enumerate(answers.values())]
    assert initial == pytest.approx(sum(expected) / len(expected))
    assert _eval_metrics(store, -1)["baseline_mean_chars"] == pytest.approx(
        sum(map(len, answers.values())) / len(answers)
    )


def test_judge_score_is_the_mean_pointwise_score(round_store, prompts_file, length_judge):
    store = round_store(
        judge={"name": "length_judge:Length"},
        task={"name": "jsonl", "path": str(prompts_file)},
        evaluation={"metric": "judge_score"},
    )
    ctx = store.context()
    try:
        score = evaluate_checkpoint(ctx, _sft_id(store), -1)
    finally:
        ctx.close()
    texts = _texts(store, _sft_id(store))
    assert score == pytest.approx(sum(map(len, texts.values())) / len(texts))
    assert _eval_metrics(store, -1)["judge_score_n"] == len(HELDOUT)


def test_evaluation_ignores_the_training_label_noise(round_store, prompts_file, length_judge):
    store = round_store(
        judge={"name": "length_judge:Length", "flip_rate": 0.5},
        task={"name": "jsonl", "path": str(prompts_file)},
        evaluation={"metric": "judge_score"},
    )
    ctx = store.context()
    try:
        evaluate_checkpoint(ctx, _sft_id(store), -1)
    finally:
        ctx.close()
    texts = _texts(store, _sft_id(store))
    with store.sessions() as s:
        scores = s.scalars(select(EvalScore.score)).all()
    assert sorted(scores) == sorted(float(len(t)) for t in texts.values())  # none flipped


def test_the_best_checkpoint_and_the_round_follow_the_win_rate(
    round_store, prompts_file, pairwise_judge
):
    store = round_store(
        judge={"name": "longer_judge:Longer"},
        task={"name": "jsonl", "path": str(prompts_file)},
        trained=True,
    )
    ctx = store.context()
    try:
        from selfplay.stages.evaluate import evaluate_round

        evaluate_checkpoint(ctx, _sft_id(store), -1)
        evaluate_round(ctx, store.round_id)  # the output is the initial policy: 0.5
    finally:
        ctx.close()
    with store.sessions() as s:
        rnd = s.get(Round, store.round_id)
        assert rnd.heldout_accuracy is None  # no answers: no accuracy
        # Equal scores: the earliest checkpoint is the best.
        assert queries.best_checkpoint(s, store.run_id).round_index == -1
        guard = {m.name for m in s.scalars(select(Metric).where(Metric.stage == "guard"))}
    # Without answers there is no gold score, and so no proxy–gold gap.
    assert "kl_sft" in guard and not guard & {"gold_score", "proxy_gold_gap"}


def _cfg(tmp_path: Path, prompts: Path, **evaluation) -> object:
    return parse_config(
        {
            "task": {"name": "jsonl", "path": str(prompts)},
            "run": {"output_dir": str(tmp_path / "out")},
            "evaluation": evaluation,
        }
    )


def test_the_metric_defaults_by_the_held_out_answers(tmp_path, prompts_file):
    cfg = _cfg(tmp_path, prompts_file)
    assert resolve_metric(cfg, [Prompt("q")]) == "win_rate"
    assert resolve_metric(cfg, [Prompt("q", "1")]) == "accuracy"
    assert resolve_metric(cfg, []) is None
    with pytest.raises(ConfigError, match="accuracy needs an answer on every held-out prompt"):
        resolve_metric(_cfg(tmp_path, prompts_file, metric="accuracy"), [Prompt("q")])
    with pytest.raises(ValueError, match="evaluation.reference is a win-rate baseline"):
        _cfg(tmp_path, prompts_file, metric="judge_score", reference="r.jsonl")


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (["not json"], r"reference.jsonl:1: invalid JSON"),
        ([{"prompt": HELDOUT[0]}], r"reference.jsonl:1: field 'response' must be a string"),
        ([{"prompt": "Q:0+0=", "response": "A:0"}], r"reference.jsonl:1: .* is not held out"),
        (
            [{"prompt": HELDOUT[0], "response": "a"}] * 2,
            r"reference.jsonl:2: a second response to 'Q:1\+2='",
        ),
        ([{"prompt": HELDOUT[0], "response": "a"}], r"no response to 5 of the 6 held-out"),
    ],
)
def test_a_bad_reference_file_names_its_line(tmp_path, prompts_file, lines, problem):
    path = tmp_path / "reference.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    cfg = _cfg(tmp_path, prompts_file, reference=str(path))
    with pytest.raises(ConfigError, match=problem):
        check_evaluation(cfg, make_task(cfg.task, cfg.run.seed))
