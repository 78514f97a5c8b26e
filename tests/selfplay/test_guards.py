"""Long-run guards on a hand-made store: best checkpoint, plateau rollback/stop, retention,
and label noise."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from db import queries
from db.engine import session_factory, transaction
from db.models import Checkpoint, Round, RoundStatus, Run
from selfplay.checkpoints import prune_checkpoints
from selfplay.config import parse_config
from selfplay.driver import ensure_round, next_policy
from selfplay.judges import BaseJudge, JudgeItem, NoisyJudge, Verdict
from selfplay.progress import SilentReporter
from selfplay.stages import Context
from selfplay.tasks.base import Prompt


def store(engine: Engine, tmp_path: Path, accuracies: list[float], **guards) -> Context:
    """A run whose checkpoints -1, 0, 1, … have these held-out accuracies, all rounds done."""
    cfg = parse_config({"run": {"output_dir": str(tmp_path)}, "guards": guards})
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        run = Run(name="g", config={})
        s.add(run)
        s.flush()
        ckpts = []
        for i, acc in enumerate(accuracies):
            path = tmp_path / f"ckpt{i - 1}"
            path.mkdir()
            c = Checkpoint(
                run_id=run.id,
                round_index=i - 1,
                path=str(path),
                heldout_accuracy=acc,
                heldout_score=acc,
            )
            s.add(c)
            s.flush()
            ckpts.append(c)
        for i in range(len(accuracies) - 1):
            s.add(
                Round(
                    run_id=run.id,
                    index=i,
                    status=RoundStatus.DONE,
                    policy_checkpoint_id=ckpts[i].id,
                    output_checkpoint_id=ckpts[i + 1].id,
                )
            )
        run_id = run.id
    return Context(cfg, sessions, run_id, SilentReporter())


def test_best_checkpoint_is_the_earliest_of_the_highest(engine: Engine, tmp_path: Path):
    ctx = store(engine, tmp_path, [0.2, 0.5, 0.7, 0.7, 0.6])
    with ctx.sessions() as s:
        assert queries.best_checkpoint(s, ctx.run_id).round_index == 1
        assert queries.best_checkpoint(s, ctx.run_id, before=1).round_index == 0


def test_no_patience_continues_from_the_previous_round(engine: Engine, tmp_path: Path):
    ctx = store(engine, tmp_path, [0.2, 0.7, 0.5, 0.4])
    assert next_policy(ctx, 3).round_index == 2


@pytest.mark.parametrize("patience, expected", [(1, 0), (2, 0), (3, 2)])
def test_rollback_after_patience(engine: Engine, tmp_path: Path, patience: int, expected: int):
    # Best is round 0's output (0.7); rounds 1 and 2 did worse: 2 rounds without improvement.
    ctx = store(engine, tmp_path, [0.2, 0.7, 0.5, 0.4], patience=patience)
    assert next_policy(ctx, 3).round_index == expected


def test_stop_on_plateau_creates_no_round(engine: Engine, tmp_path: Path):
    ctx = store(engine, tmp_path, [0.2, 0.7, 0.5, 0.4], patience=2, on_plateau="stop")
    assert ensure_round(ctx, 3) is None
    with ctx.sessions() as s:
        assert queries.get_round(s, ctx.run_id, 3) is None
    # An existing round is resumed whatever the rule says now.
    assert ensure_round(ctx, 2) is not None


def test_keep_last_deletes_all_but_sft_best_and_last(engine: Engine, tmp_path: Path):
    ctx = store(engine, tmp_path, [0.2, 0.3, 0.9, 0.4, 0.5, 0.6], keep_last=2)
    deleted = prune_checkpoints(ctx.sessions, ctx.run_id, ctx.cfg.guards.keep_last)
    # Checkpoints -1..4: keep SFT (-1), best (1: 0.9), the last two (3, 4); delete 0 and 2.
    assert sorted(Path(p).name for p in deleted) == ["ckpt0", "ckpt2"]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ckpt"))
    assert left == ["ckpt-1", "ckpt1", "ckpt3", "ckpt4"]
    assert prune_checkpoints(ctx.sessions, ctx.run_id, ctx.cfg.guards.keep_last) == []  # idempotent


class Fixed(BaseJudge):
    name = "fixed"

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        return [Verdict(status="ok", score=1.0) for _ in items]


def test_noisy_judge_flips_about_the_rate_deterministically():
    items = [JudgeItem(Prompt(f"Q:{i}", None), f"A:{i}") for i in range(2000)]
    judge = NoisyJudge(Fixed(), 0.2, seed=0)
    scores = [v.score for v in judge.judge(items)]
    flipped = scores.count(0.0) / len(scores)
    assert 0.17 < flipped < 0.23
    assert [v.score for v in judge.judge(items)] == scores
    assert [v.score for v in NoisyJudge(Fixed(), 0.2, seed=1).judge(items)] != scores
