"""The evaluate stage: held-out accuracy, and the guards' proxy score from the run's judge —
including a judge that asks the policy, in a process that never ran the judge stage."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import Checkpoint, Metric, Round
from selfplay.generation.base import SamplingParams
from selfplay.judges import BaseJudge, Comparison, JudgeItem, Policy, Verdict
from selfplay.stages.evaluate import evaluate_round
from selfplay.tasks.base import Prompt

ASKS_POLICY_JUDGE = '''
import os

from selfplay.generation.base import SamplingParams
from selfplay.judges import BaseJudge, Verdict


class AsksPolicy(BaseJudge):
    """Scores 1 when the policy it is given is the round's policy and it can sample."""

    name = "asks_policy"
    needs_policy = True

    def __init__(self, cfg, env):
        self.expected = os.environ["EXPECTED_POLICY"]

    def judge(self, items, policy):
        outputs = policy.generate([i.prompt for i in items], SamplingParams(max_new_tokens=2))
        ok = policy.path == self.expected and len(outputs) == len(items)
        return [Verdict("ok", score=1.0 if ok else 0.0) for _ in items]
'''


@pytest.fixture
def asks_policy_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "asks_policy_judge.py").write_text(ASKS_POLICY_JUDGE)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_fresh_process_evaluates_with_a_judge_that_asks_the_round_policy(
    round_store, asks_policy_judge: None, monkeypatch: pytest.MonkeyPatch
):
    """Bug: with judge `self`, a process that had not run the judge stage (a resume at
    `evaluating`, the Celery `evaluate` task) got only failed verdicts ("the policy handle has
    no checkpoint yet") and the guard's proxy score silently disappeared."""
    store = round_store(judge={"name": "asks_policy_judge:AsksPolicy"}, trained=True)
    with store.sessions() as s:
        monkeypatch.setenv("EXPECTED_POLICY", s.get(Round, store.round_id).policy_checkpoint.path)
    ctx = store.context()  # nothing but this stage runs in it
    try:
        evaluate_round(ctx, store.round_id)
    finally:
        ctx.close()
    with store.sessions() as s:
        guard = {m.name: m.value for m in s.scalars(select(Metric).where(Metric.stage == "guard"))}
        accuracy = s.get(Round, store.round_id).heldout_accuracy
        checkpoint = s.scalar(select(Checkpoint).where(Checkpoint.round_index == -1))
    assert guard["proxy_score"] == 1.0  # every held-out sample judged, with the round's policy
    assert set(guard) >= {"kl_sft", "gold_score", "proxy_gold_gap", "sampled_mean_tokens"}
    assert accuracy is not None and checkpoint.heldout_accuracy == accuracy


def test_the_self_judge_without_a_policy_fails_every_item_saying_so():
    from selfplay.config import parse_config
    from selfplay.judges import JudgeEnv, make_judge, safe_judge

    judge = make_judge(parse_config({"judge": {"name": "self"}}).judge, JudgeEnv(task=None))
    assert judge.needs_policy and isinstance(judge, BaseJudge)
    verdicts = safe_judge(judge, [JudgeItem(Prompt("Q:1+1="), "2")] * 2)
    assert [v.status for v in verdicts] == ["failed", "failed"]
    assert "judge 'self' raised ValueError: needs the round's policy" in verdicts[0].error


def test_a_policy_loads_its_checkpoint_before_sampling():
    class Recording:
        def __init__(self) -> None:
            self.loaded: list[str] = []

        def load(self, path: str) -> None:
            self.loaded.append(path)

        def generate(self, prompts, params):
            return [[] for _ in prompts]

        def close(self) -> None:
            pass

    backend = Recording()
    Policy(backend, "/ckpt/a").generate([Prompt("x")], SamplingParams())
    Policy(backend, "/ckpt/b").generate([Prompt("x")], SamplingParams())
    assert backend.loaded == ["/ckpt/a", "/ckpt/b"]


def test_a_plugin_is_given_the_protocol_defaults():
    from selfplay.judges import PluginJudge

    class Bare:
        name = "bare"

        def judge(self, items):
            return [Verdict("ok", score=0.5) for _ in items]

    class Pairwise(Bare):
        def compare(self, items):
            return [Comparison("ok", prob=0.75) for _ in items]

    pairwise = PluginJudge(Pairwise())
    assert pairwise.compare([None])[0].prob == 0.75  # a pairwise plug-in keeps compare
    judge = PluginJudge(Bare())
    assert (judge.name, judge.needs_siblings, judge.needs_policy) == ("bare", False, False)
    judge.close()  # no-op: the plug-in has no close
    assert judge.judge([JudgeItem(None, "y")])[0].score == 0.5
