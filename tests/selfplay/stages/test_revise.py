"""Critique → revise on a real tiny model: revisions stored, linked, judged, paired; resumable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from db import queries
from db.engine import make_engine, session_factory
from db.migrate import upgrade
from db.models import Judgment, Metric, Pair, Prompt, Response, Round, RoundStatus
from selfplay.config import parse_config
from selfplay.driver import ensure_initial_checkpoint, ensure_round, ensure_run, round_recipe
from selfplay.pairing import revision_pairs
from selfplay.progress import SilentReporter
from selfplay.stages import STEPS, Context
from selfplay.stages.generate import generate_round, insert_prompts
from selfplay.stages.judge import judge_round
from selfplay.stages.pair import pair_round
from selfplay.stages.revise import revise_round, revision_plan, revision_sample_index

K = 4
# An untrained tiny model (no SFT: seconds, not minutes) writes random characters; a plug-in
# judge that counts digits gives those varied scores and a critique, so some revisions beat
# their originals and some do not.
DIGITS_JUDGE = """
from selfplay.judges import Verdict


class DigitsJudge:
    name = "digits"

    def __init__(self, cfg, env):
        pass

    def judge(self, items):
        out = []
        for item in items:
            n = sum(c.isdigit() for c in item.response)
            out.append(Verdict("ok", score=float(n), critique=f"{n} digits: write more digits"))
        return out
"""
SMALL = {
    "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "intermediate_size": 64}},
    "task": {"prompts_per_round": 16, "heldout_size": 50},
    "generation": {"samples_per_prompt": K, "prompts_per_batch": 8},
    "judge": {"name": "revise_digits_judge:DigitsJudge"},
    # The untrained model (sft steps 0 below) rarely ends an answer: pair its truncated ones.
    "pairing": {"truncated": "keep"},
    "revise": {
        "enabled": True,
        "max_per_round": 20,
        "pass_score": None,  # failed: below the round's best score
        "prompt_template": "{critique}\n{prompt}",
        "temperature": 1.0,
    },
}


@pytest.fixture
def digits_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the `revise_digits_judge` module importable (a third-party judge by module:attr)."""
    (tmp_path / "revise_digits_judge.py").write_text(DIGITS_JUDGE)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_revision_pairs_keep_only_revisions_the_judge_scored_higher():
    rows = [
        queries.ScoredResponse(1, 10, 0.0, 3, 0),
        queries.ScoredResponse(2, 10, 1.0, 3, 1),
        queries.ScoredResponse(3, 10, 1.0, 3, 8, revises_id=1),  # better: a pair
        queries.ScoredResponse(4, 11, 0.5, 3, 0),
        queries.ScoredResponse(5, 11, 0.5, 3, 8, revises_id=4),  # a tie: no pair
        queries.ScoredResponse(6, 12, 0.2, 3, 8, revises_id=99),  # original unscored: none
    ]
    pairs = revision_pairs(rows)
    assert [(p.chosen_id, p.rejected_id, p.margin) for p in pairs] == [(3, 1, 1.0)]


def test_revise_stage_stores_links_judges_and_pairs_then_reruns_as_a_noop(
    tmp_path: Path, db_url: str, digits_judge: None
):
    data = {k: dict(v) for k, v in SMALL.items()}
    data["model"]["sft"] = {"steps": 0}
    data["run"] = {"name": "revise", "seed": 0, "output_dir": str(tmp_path / "out")}
    data["store"] = {"url": db_url}
    cfg = parse_config(data)
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = session_factory(engine)
    ctx = Context(cfg, sessions, ensure_run(sessions, cfg), SilentReporter())
    try:
        ensure_initial_checkpoint(ctx)
        round_id = ensure_round(ctx, 0)
        insert_prompts(ctx, round_id)
        generate_round(ctx, round_id)
        judge_round(ctx, round_id)

        plan = revision_plan(ctx, round_id)
        with sessions() as s:
            scored = queries.scored_responses(s, round_id, "digits")
            notes = {
                j.response_id: j.critique
                for j in s.scalars(select(Judgment).where(Judgment.judge == "digits"))
            }
        best = max(r.score for r in scored)
        assert len([r for r in scored if r.score < best]) > 20
        assert len(plan) == 20  # max_per_round
        for r, critique in plan:  # only failed ones, fed the judgment's critique
            assert r.score < best and critique == notes[r.response_id]
            assert critique == f"{int(r.score)} digits: write more digits"

        assert RoundStatus.ORDER.index("revising") == RoundStatus.ORDER.index("judging") + 1
        revising = [step for stage, step in round_recipe(cfg) if stage == RoundStatus.REVISING]
        assert revising == ["revise", "judge"]  # the revisions are judged by the judge stage
        for step in revising:
            STEPS[step](ctx, round_id)
        pair_round(ctx, round_id)

        with sessions() as s:
            revisions = s.scalars(
                select(Response).where(
                    Response.round_id == round_id, Response.revises_id.is_not(None)
                )
            ).all()
            by_id = {r.id: r for r in s.scalars(select(Response)).all()}
            scores = {
                r.response_id: r.score for r in queries.scored_responses(s, round_id, "digits")
            }
            judged = {
                j.response_id: j
                for j in s.scalars(select(Judgment).where(Judgment.judge == "digits"))
            }
            pairs = s.scalars(select(Pair).where(Pair.round_id == round_id)).all()
            metrics = {
                m.name: m.value for m in s.scalars(select(Metric).where(Metric.stage == "pair"))
            }
        planned = {r.response_id for r, _ in plan}
        assert {r.revises_id for r in revisions} == planned and len(revisions) == 20
        for rev in revisions:
            original = by_id[rev.revises_id]
            assert rev.prompt_id == original.prompt_id
            assert rev.sample_index == revision_sample_index(ctx, original.sample_index) >= K
            assert rev.checkpoint_id == original.checkpoint_id  # the round's policy wrote it
            assert judged[rev.id].status == "ok"  # judged by the run's judge

        revise_pairs = [p for p in pairs if p.builder == "revise"]
        better = {r.id for r in revisions if scores[r.id] > scores[r.revises_id]}
        assert {p.chosen_id for p in revise_pairs} == better
        assert better, "some revisions of wrong answers should come out right"
        assert len(better) < len(revisions), "and some should not"
        for p in revise_pairs:
            assert p.rejected_id == by_id[p.chosen_id].revises_id
            assert p.chosen_score == scores[p.chosen_id] > p.rejected_score
        # The configured builder (max_min) pairs the samples only, never a revision.
        revision_ids = {r.id for r in revisions}
        for p in pairs:
            if p.builder != "revise":
                assert p.chosen_id not in revision_ids and p.rejected_id not in revision_ids
        assert any(p.builder == "max_min" for p in pairs)
        assert metrics["revise_pairs"] == len(better) and metrics["revisions_judged"] == 20

        # Run again: nothing new is generated, judged or paired.
        def counts() -> tuple[int, int, int]:
            with sessions() as s:
                return tuple(
                    s.scalar(select(func.count()).select_from(m))
                    for m in (Response, Judgment, Pair)
                )

        before = counts()
        revise_round(ctx, round_id)
        judge_round(ctx, round_id)
        pair_round(ctx, round_id)
        assert counts() == before
    finally:
        ctx.close()
        engine.dispose()


def test_revise_is_off_by_default_and_the_stage_then_does_nothing(tmp_path: Path, db_url: str):
    cfg = parse_config({"run": {"output_dir": str(tmp_path)}, "store": {"url": db_url}})
    assert cfg.revise.enabled is False
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = session_factory(engine)
    ctx = Context(cfg, sessions, ensure_run(sessions, cfg), SilentReporter())
    assert RoundStatus.REVISING not in {stage for stage, _ in round_recipe(cfg)}
    revise_round(ctx, round_id=123456)  # disabled: it does not even look the round up
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Prompt)) == 0
    engine.dispose()


def _revisions(db_url: str) -> tuple[list[tuple], list[tuple], list[str]]:
    """(prompt index, original's sample index, revision's text) of every revision, the pairs
    as (builder, chosen text, rejected text) and the rounds' statuses."""
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        original = aliased(Response)
        revisions = s.execute(
            select(Prompt.index, original.sample_index, Response.text)
            .join(Prompt, Prompt.id == Response.prompt_id)
            .join(original, original.id == Response.revises_id)
            .order_by(Prompt.index, original.sample_index)
        ).all()
        chosen, rejected = aliased(Response), aliased(Response)
        pairs = s.execute(
            select(Pair.builder, chosen.text, rejected.text)
            .join(chosen, chosen.id == Pair.chosen_id)
            .join(rejected, rejected.id == Pair.rejected_id)
            .order_by(Pair.builder, chosen.text, rejected.text)
        ).all()
        statuses = list(s.scalars(select(Round.status).order_by(Round.index)))
    engine.dispose()
    return [tuple(r) for r in revisions], [tuple(p) for p in pairs], statuses


@pytest.mark.heavy
def test_killed_in_the_revising_stage_the_loop_resumes_to_the_same_revisions(tmp_path: Path):
    """`selfplay run` with revise on, SIGKILLed after the first revision chunk, then resumed:
    the same revisions and pairs as an uninterrupted run."""
    (tmp_path / "revise_digits_judge.py").write_text(DIGITS_JUDGE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("SELFPLAY_KILL_AT", None)

    def run(name: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
        data = {k: dict(v) for k, v in SMALL.items()}
        data["model"]["sft"] = {"steps": 0}
        data["run"] = {"name": "revise", "rounds": 1, "output_dir": str(tmp_path / name)}
        data["training"] = {"batch_size": 4, "max_steps": 2}
        data["guards"] = {"heldout_samples": False}
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(data))
        return subprocess.run(
            [sys.executable, "-m", "selfplay", "run", str(config)],
            env={**env, "SELFPLAY_KILL_AT": kill_at} if kill_at else env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    clean = run("clean")
    assert clean.returncode == 0, clean.stderr
    expected = _revisions(f"sqlite:///{tmp_path / 'clean' / 'selfplay.db'}")
    assert len(expected[0]) == 20 and any(b == "revise" for b, _, _ in expected[1])
    assert expected[2] == ["done"]

    crashy = f"sqlite:///{tmp_path / 'crashy' / 'selfplay.db'}"
    killed = run("crashy", kill_at="revising:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    revisions, pairs, statuses = _revisions(crashy)
    assert statuses == ["revising"] and len(revisions) == 8 and not pairs  # one chunk stored
    resumed = run("crashy")
    assert resumed.returncode == 0, resumed.stderr
    assert _revisions(crashy) == expected


def test_a_chat_policy_is_asked_to_revise_as_the_conversation_continued(chat_model_dir: Path):
    from selfplay.rendering import PromptRenderer
    from selfplay.stages.revise import revision_request
    from selfplay.tasks.base import Prompt as TaskPrompt

    cfg = parse_config({"revise": {"critique_turn": "Critique: {critique}"}}).revise
    prompt = TaskPrompt.conversation([("system", "Be brief."), ("user", "What is 2 + 3?")])
    asked = revision_request(cfg, prompt, "It is 6.", "wrong sum", chat=True)
    assert asked.chat() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "It is 6."},
        {"role": "user", "content": "Critique: wrong sum"},
    ]
    text = PromptRenderer.load(str(chat_model_dir)).text(asked)
    assert text.endswith(
        "<|im_start|>assistant\nIt is 6.<|im_end|>\n<|im_start|>user\nCritique: wrong sum"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    # A policy without a template reads revise.prompt_template as plain text, as before.
    plain = revision_request(cfg, TaskPrompt("Q:2+3="), "A:6", "wrong sum", chat=False)
    assert plain == TaskPrompt(
        cfg.prompt_template.format(prompt="Q:2+3=", response="A:6", critique="wrong sum")
    )
