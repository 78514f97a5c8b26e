"""The judge meta-evaluation stage on the seeded store, and `selfplay status` showing it."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker
from typer.testing import CliRunner

from db.engine import make_engine, session_factory
from db.models import Round, Run
from db.summaries import stage_metrics
from selfplay.cli import app
from selfplay.config import JudgeConfig, parse_config
from selfplay.judges import JudgeEnv, JudgeItem, Verdict
from selfplay.progress import SilentReporter
from selfplay.stages import Context, Engines
from selfplay.stages.judge import store_judge_eval
from selfplay.tasks.base import Prompt


class Llm:
    """Stands for the seeded store's `llm` judge (its judgments are already stored)."""

    name = "llm"

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        pass

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        raise AssertionError("meta-evaluation reads stored judgments; it never judges")


class SamplesTwoAndThreeAreRight:
    """A task checker: responses 'A2…' and 'A3…' are correct, 'A0', 'A1…' wrong."""

    def verify(self, prompt: Prompt, response: str) -> tuple[bool, str]:
        return response[:2] in ("A2", "A3"), ""


def _evaluate_round_0(seeded_url: str) -> tuple[sessionmaker, int]:
    """Run the meta-evaluation of the demo run's round 0 for `llm`; (sessions, run id)."""
    cfg = parse_config({"judge": {"name": f"{__name__}:Llm"}, "store": {"url": seeded_url}})
    sessions = session_factory(make_engine(seeded_url))
    with sessions() as s:
        run_id = s.scalar(select(Run.id).where(Run.name == "demo"))
        round_id = s.scalar(select(Round.id).where(Round.run_id == run_id, Round.index == 0))
    engines = Engines(cfg, sessions, SamplesTwoAndThreeAreRight())
    store_judge_eval(Context(cfg, sessions, run_id, SilentReporter(), engines), round_id)
    return sessions, run_id


def test_agreement_with_the_verifier_is_stored_and_shown(seeded_url: str):
    sessions, run_id = _evaluate_round_0(seeded_url)

    with sessions() as s:
        values = stage_metrics(s, run_id, "judge_eval")[0]
    # llm scores samples 0..3 as 0, 0.9, 2/3, 1: of the 4 (right, wrong) pairs per prompt it
    # orders 2 vs 1 the wrong way → 3/4, over 3 prompts × 4 pairs.
    assert values["verifier_agreement"] == pytest.approx(0.75)
    assert values["agreement_pairs"] == 12
    assert values["failed_rate"] == 0.0
    assert "position_bias_rate" not in values  # a pointwise judge makes no comparisons

    out = CliRunner().invoke(
        app, ["status", "--db", seeded_url, "--run", "demo"], env={"COLUMNS": "200"}
    )
    assert out.exit_code == 0, out.output
    assert "judge agrees" in out.output and "0.750" in out.output


def test_db_stats_and_the_run_page_show_the_meta_evaluation(seeded_url: str):
    from fastapi.testclient import TestClient

    from selfplay.dashboard.app import create_app

    _, run_id = _evaluate_round_0(seeded_url)

    out = CliRunner().invoke(app, ["db", "stats", "--db", seeded_url, "--run", "demo", "--json"])
    assert out.exit_code == 0, out.output
    rounds = json.loads(out.output)
    assert [r["verifier_agreement"] for r in rounds] == [0.75, None]
    with TestClient(create_app(seeded_url)) as client:
        page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200 and 'aria-label="judge meta-evaluation' in page.text
