"""The judge contract is checked, not trusted: what a plug-in returns that is not a Verdict with
a finite float score (or a Comparison with a probability in [0, 1]) becomes a failed judgment
naming the judge and the problem, so nothing non-finite is stored or reaches a pair builder."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlalchemy import select, update

from db.engine import make_engine, session_factory
from db.models import Judgment, Prompt, Response, Round, Run
from db.queries import scored_responses
from selfplay.config import ConfigError, JudgeConfig, parse_config
from selfplay.judges import (
    BaseJudge,
    Comparison,
    JudgeEnv,
    JudgeItem,
    PairItem,
    Verdict,
    make_judge,
    safe_compare,
    safe_judge,
)
from selfplay.progress import SilentReporter
from selfplay.stages import Context
from selfplay.stages.judge import judge_responses
from selfplay.stages.pair import pair_round
from selfplay.tasks.base import Prompt as TaskPrompt

ITEMS = [JudgeItem(prompt=TaskPrompt(text="Q: 1+1"), response=r) for r in ("A: 2", "A: 3")]


class Returns(BaseJudge):
    """A judge that returns `outputs` (one per item) whatever it is asked."""

    name = "returns"

    def __init__(self, outputs: list) -> None:
        self.outputs = outputs

    def judge(self, items: list[JudgeItem]) -> list:
        return list(self.outputs)

    def compare(self, items: list[PairItem]) -> list:
        return list(self.outputs)


@pytest.mark.parametrize(
    ("outputs", "problem"),
    [
        ([Verdict(status="ok", score=math.nan)] * 2, "score is nan, not a finite float"),
        ([Verdict(status="ok", score=math.inf)] * 2, "score is inf, not a finite float"),
        ([Verdict(status="ok", score=-math.inf)] * 2, "score is -inf, not a finite float"),
        ([0.5, 0.5], "returned float 0.5, not a Verdict"),
        ([Verdict(status="ok", score="high")] * 2, "score is str 'high', not a float"),
        ([Verdict(status="ok", score=None)] * 2, "score is NoneType None, not a float"),
        ([Verdict(status="ok", score=True)] * 2, "score is bool True, not a float"),
        ([Verdict(status="done", score=1.0)] * 2, "returned status 'done'"),
    ],
)
def test_a_verdict_that_breaks_the_contract_is_a_failed_verdict(outputs: list, problem: str):
    verdicts = safe_judge(Returns(outputs), ITEMS)
    assert [v.status for v in verdicts] == ["failed", "failed"]
    assert all(v.score is None for v in verdicts)
    assert all(v.error.startswith("judge 'returns' ") and problem in v.error for v in verdicts)


def test_good_verdicts_pass_and_numpy_scores_become_floats():
    failed = Verdict.failure("timeout")
    verdicts = safe_judge(Returns([Verdict(status="ok", score=np.float32(0.25)), failed]), ITEMS)
    assert verdicts[0].status == "ok" and verdicts[0].score == 0.25
    assert type(verdicts[0].score) is float
    assert verdicts[1] is failed  # a failure the judge reports is kept as it is


@pytest.mark.parametrize(
    ("prob", "problem"),
    [
        (1.5, "prob 1.5 is outside [0.0, 1.0]"),
        (-0.1, "prob -0.1 is outside [0.0, 1.0]"),
        (math.nan, "prob is nan, not a finite float"),
        ("0.5", "prob is str '0.5', not a float"),
    ],
)
def test_a_comparison_outside_zero_one_is_a_failed_comparison(prob: object, problem: str):
    pairs = [PairItem(prompt=TaskPrompt(text="Q"), first="a", second="b")]
    out = safe_compare(Returns([Comparison(status="ok", prob=prob)]), pairs)
    assert out[0].status == "failed" and out[0].prob is None
    assert problem in out[0].error
    assert safe_compare(Returns([Comparison(status="ok", prob=1)]), pairs)[0].prob == 1.0


class ExplodingFactory:
    name = "exploding"

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        raise RuntimeError("cannot reach my model")


def test_a_factory_that_raises_is_a_config_error_naming_judge_name():
    cfg = parse_config({"judge": {"name": f"{__name__}:ExplodingFactory"}})
    with pytest.raises(ConfigError) as err:
        make_judge(cfg.judge, JudgeEnv(task=None))
    assert str(err.value) == (
        f"judge.name: the factory of judge '{__name__}:ExplodingFactory' raised "
        "RuntimeError: cannot reach my model"
    )


class NanJudge:
    name = "nan"

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        pass

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        return [Verdict(status="ok", score=math.nan) for _ in items]


def _ctx(url: str, judge: str):
    cfg = parse_config({"judge": {"name": judge}, "store": {"url": url}})
    sessions = session_factory(make_engine(url))
    with sessions() as s:
        run_id = s.scalar(select(Run.id).where(Run.name == "demo"))
    return Context(cfg, sessions, run_id, SilentReporter()), sessions


def _round0(sessions) -> tuple[int, list]:
    with sessions() as s:
        round_id = s.scalar(select(Round.id).where(Round.index == 0))
        todo = list(
            s.execute(
                select(Response, Prompt)
                .join(Prompt, Prompt.id == Response.prompt_id)
                .where(Prompt.round_id == round_id)
                .order_by(Response.id)
            ).all()
        )
    return round_id, todo


def test_nan_scores_are_stored_failed_and_pairing_builds_nothing_from_them(seeded_url: str):
    ctx, sessions = _ctx(seeded_url, f"{__name__}:NanJudge")
    round_id, todo = _round0(sessions)
    judge_responses(ctx, todo)
    with sessions() as s:
        rows = s.scalars(select(Judgment).where(Judgment.judge == "nan")).all()
        assert len(rows) == len(todo)
        assert {j.status for j in rows} == {"failed"}
        assert all(j.score is None and "score is nan" in j.error for j in rows)
        assert scored_responses(s, round_id, "nan") == []


def test_non_finite_rows_stored_before_the_check_never_reach_a_pair_builder(seeded_url: str):
    """A store written by an older version (ok judgments with NULL or NaN scores) is not stuck:
    pairing skips those responses instead of crashing or pairing on NaN."""
    ctx, sessions = _ctx(seeded_url, "verifier")
    round_id, todo = _round0(sessions)
    judge_responses(ctx, todo)
    poisoned = [r.id for r, _ in todo[:2]]
    with sessions.begin() as s:
        s.execute(update(Judgment).where(Judgment.response_id == poisoned[0]).values(score=None))
        s.execute(
            update(Judgment).where(Judgment.response_id == poisoned[1]).values(score=math.nan)
        )
    with sessions() as s:
        kept = [r.response_id for r in scored_responses(s, round_id, "verifier")]
    assert poisoned[0] not in kept and poisoned[1] not in kept
    assert len(kept) == len(todo) - 2
    pair_round(ctx, round_id)  # does not raise
