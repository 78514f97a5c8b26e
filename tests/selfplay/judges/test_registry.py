"""The judge registry: built-ins, `module:attr`, validation at config load, failures as values."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.engine import make_engine, session_factory
from db.models import Judgment, Prompt, Response, Round, Run
from selfplay.config import ConfigError, JudgeConfig, parse_config
from selfplay.judges import (
    BUILTIN_JUDGES,
    JudgeEnv,
    JudgeItem,
    JudgeNotFound,
    Verdict,
    available_judges,
    resolve_factory,
)
from selfplay.progress import SilentReporter
from selfplay.stages import Context
from selfplay.stages.judge import judge_responses


class LengthJudge:
    """A third-party-style judge: shorter responses score higher (options.scale)."""

    name = "length"

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        self.scale = float(cfg.options.get("scale", 1.0))

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        return [Verdict(status="ok", score=self.scale / (1 + len(i.response))) for i in items]


class RaisingJudge:
    name = "raising"

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        pass

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        raise RuntimeError("plug-in bug")


class ShortJudge(RaisingJudge):
    name = "short"

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        return [Verdict(status="ok", score=1.0)]


def test_builtins_resolve_and_are_listed():
    for name in BUILTIN_JUDGES:
        assert callable(resolve_factory(name))
        assert name in available_judges()


def test_unknown_judge_fails_at_config_load_naming_the_field():
    with pytest.raises(ConfigError) as err:
        parse_config({"judge": {"name": "verifer"}})
    assert "judge.name: unknown judge 'verifer'" in str(err.value)
    assert "verifier" in str(err.value)  # the known names are listed


def test_module_attr_errors_are_specific():
    with pytest.raises(JudgeNotFound, match="cannot import module 'no_such_mod'"):
        resolve_factory("no_such_mod:Judge")
    with pytest.raises(JudgeNotFound, match="has no attribute 'Nope'"):
        resolve_factory(f"{__name__}:Nope")
    with pytest.raises(ConfigError, match="reward_model.path is required"):
        parse_config({"judge": {"name": "reward_model"}})
    with pytest.raises(ConfigError, match="at least two member"):
        parse_config({"judge": {"name": "ensemble", "ensemble": {"members": [{}]}}})


def _ctx(url: str, judge: dict):
    """A context on the seeded `demo` store (tests/selfplay/conftest.py) with this judge."""
    cfg = parse_config({"judge": judge, "store": {"url": url}})
    sessions = session_factory(make_engine(url))
    with sessions() as s:
        run_id = s.scalar(select(Run.id).where(Run.name == "demo"))
    return Context(cfg, sessions, run_id, SilentReporter()), sessions


def _round_responses(sessions) -> list:
    """(response, prompt) of the demo run's round 0."""
    with sessions() as s:
        return list(
            s.execute(
                select(Response, Prompt)
                .join(Prompt, Prompt.id == Response.prompt_id)
                .join(Round, Round.id == Prompt.round_id)
                .where(Round.index == 0)
                .order_by(Response.id)
            ).all()
        )


def test_module_attr_plugin_judges_with_its_options(seeded_url: str):
    ctx, sessions = _ctx(seeded_url, {"name": f"{__name__}:LengthJudge", "options": {"scale": 2.0}})
    todo = _round_responses(sessions)
    judge_responses(ctx, todo)
    with sessions() as s:
        rows = s.scalars(select(Judgment).where(Judgment.judge == "length")).all()
    assert len(rows) == len(todo)
    by_id = {j.response_id: j.score for j in rows}
    for r, _ in todo:
        assert by_id[r.id] == pytest.approx(2.0 / (1 + len(r.text)))


@pytest.mark.parametrize(
    ("judge", "reason"),
    [("RaisingJudge", "raised RuntimeError: plug-in bug"), ("ShortJudge", "returned 1 verdicts")],
)
def test_a_broken_judge_is_recorded_failed_and_the_stage_returns(
    seeded_url: str, judge: str, reason: str
):
    ctx, sessions = _ctx(seeded_url, {"name": f"{__name__}:{judge}"})
    todo = _round_responses(sessions)
    judge_responses(ctx, todo)  # does not raise
    with sessions() as s:
        rows = s.scalars(select(Judgment).where(Judgment.judge == ctx.engines.judge.name)).all()
    assert len(rows) == len(todo)
    assert {j.status for j in rows} == {"failed"}
    assert all(reason in j.error and j.score is None for j in rows)
