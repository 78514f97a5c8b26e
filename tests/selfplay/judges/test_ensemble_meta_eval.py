"""Ensemble aggregation (numbers worked by hand) and judge meta-evaluation on hand tables."""

from __future__ import annotations

import math

import pytest

from selfplay.config import JudgeConfig, parse_config
from selfplay.judges import JudgeEnv, JudgeItem, Verdict, make_judge
from selfplay.judges.ensemble import aggregate
from selfplay.judges.meta_eval import Checked, position_bias_rate, verifier_agreement
from selfplay.tasks.base import Prompt


class TableJudge:
    """Scores from cfg.options["scores"], one per item in order; None marks a failure."""

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        self.name = cfg.options["name"]
        self.scores = cfg.options["scores"]

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        return [
            Verdict.failure("no score") if s is None else Verdict(status="ok", score=s)
            for s in self.scores[: len(items)]
        ]


def _ensemble(aggregate_: str, a: list, b: list, normalize: str = "z"):
    members = [
        {"name": f"{__name__}:TableJudge", "options": {"name": "a", "scores": a}},
        {"name": f"{__name__}:TableJudge", "options": {"name": "b", "scores": b}},
    ]
    cfg = parse_config(
        {
            "judge": {
                "name": "ensemble",
                "ensemble": {"members": members, "aggregate": aggregate_, "normalize": normalize},
            }
        }
    ).judge
    return make_judge(cfg, JudgeEnv(task=None))


ITEMS = [JudgeItem(Prompt("q"), f"r{i}") for i in range(3)]


def test_z_normalised_mean_worst_and_uncertainty():
    # a on a 0/1 scale, b on a 0–10 scale; both z-score to [-1.2247, 0, 1.2247]-like columns:
    # a = [0, 0.5, 1] → z = [-1.2247, 0, 1.2247]; b = [10, 0, 5] → z = [1.2247, -1.2247, 0].
    z = math.sqrt(1.5)
    a, b = [0.0, 0.5, 1.0], [10.0, 0.0, 5.0]
    mean = [v.score for v in _ensemble("mean", a, b).judge(ITEMS)]
    assert mean == pytest.approx([0.0, -z / 2, z / 2])
    worst = [v.score for v in _ensemble("worst", a, b).judge(ITEMS)]
    assert worst == pytest.approx([-z, -z, 0.0])
    # uncertainty: mean − 0.5·pvariance; item 0: values (−z, z): var z² = 1.5 → −0.75.
    unc = [v.score for v in _ensemble("uncertainty", a, b).judge(ITEMS)]
    assert unc == pytest.approx([-0.75, -z / 2 - 0.5 * (z / 2) ** 2, z / 2 - 0.5 * (z / 2) ** 2])
    # normalize: none keeps the raw scales (b dominates).
    raw = [v.score for v in _ensemble("mean", a, b, normalize="none").judge(ITEMS)]
    assert raw == pytest.approx([5.0, 0.25, 3.0])


def test_a_failed_member_is_skipped_and_all_failed_fails():
    verdicts = _ensemble("mean", [None, 1.0, None], [2.0, 4.0, None]).judge(ITEMS)
    assert verdicts[0].status == "ok"
    assert verdicts[0].score == pytest.approx(-1.0)  # b alone: z of 2 in [2, 4]
    assert [m["status"] for m in verdicts[0].trace["members"]] == ["failed", "ok"]
    assert verdicts[2].status == "failed"
    assert "every member failed" in verdicts[2].error


def test_aggregate_by_hand():
    assert aggregate([1.0, 3.0], "mean", 0.5) == 2.0
    assert aggregate([1.0, 3.0], "worst", 0.5) == 1.0
    assert aggregate([1.0, 3.0], "uncertainty", 0.5) == pytest.approx(2.0 - 0.5 * 1.0)


def test_verifier_agreement_counts_only_pairs_the_verifier_tells_apart():
    rows = [
        # prompt 1: correct 0.9 vs wrong 0.2 and 0.9 → one agreement, one tie (½).
        Checked(1, 0.9, True),
        Checked(1, 0.2, False),
        Checked(1, 0.9, False),
        # prompt 2: correct 0.1 vs wrong 0.5 → disagreement.
        Checked(2, 0.1, True),
        Checked(2, 0.5, False),
        # prompt 3: all correct → no pair.
        Checked(3, 0.3, True),
        Checked(3, 0.7, True),
    ]
    agreement, pairs = verifier_agreement(rows)
    assert pairs == 3
    assert agreement == pytest.approx((1 + 0.5 + 0) / 3)
    assert verifier_agreement([Checked(1, 0.5, True)]) == (None, 0)


def test_position_bias_rate_from_traces():
    traces = [
        {"comparisons": [{"position_flip": True}, {"position_flip": False}]},
        {"comparisons": [{"position_flip": False}]},
        None,
        {"members": []},
    ]
    assert position_bias_rate(traces) == (pytest.approx(1 / 3), 3)
    assert position_bias_rate([None, {}]) == (None, 0)
