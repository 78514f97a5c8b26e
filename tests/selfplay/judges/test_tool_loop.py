"""A real loop on the code task judged by the tool critic: tiny model, sandboxed unit tests."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db import queries
from db.engine import make_engine, session_factory
from db.models import Judgment
from selfplay.config import parse_config
from selfplay.driver import run_loop

pytestmark = pytest.mark.heavy


def test_one_round_of_code_judged_by_the_tool_critic(tmp_path):
    cfg = parse_config(
        {
            "run": {"name": "code", "seed": 0, "rounds": 1, "output_dir": str(tmp_path)},
            "task": {"name": "code", "prompts_per_round": 16, "heldout_size": 20},
            # No SFT validation: each check would run 256 sandboxed programs.
            "model": {"sft": {"steps": 300, "target_accuracy": None}},
            "generation": {"samples_per_prompt": 4, "prompts_per_batch": 16, "max_new_tokens": 32},
            "judge": {"name": "tool", "tool": {"wall_timeout_s": 3.0, "max_parallel": 2}},
            "training": {"loss": "rft", "batch_size": 8, "max_steps": 8, "epochs": 1},
        }
    )
    summaries = run_loop(cfg)
    assert [s.status for s in summaries] == ["done"]
    assert summaries[0].heldout_accuracy is not None

    engine = make_engine(cfg.db_url)
    with session_factory(engine)() as s:
        run_id = queries.get_run(s, "code").id
        judgments = s.scalars(select(Judgment).where(Judgment.judge == "tool")).all()
    engine.dispose()
    assert run_id and len(judgments) == 16 * 4
    assert all(j.status == "ok" and 0.0 <= j.score <= 1.0 for j in judgments)
    # Every critique comes from a sandboxed run of the harness, or from the compiler.
    for j in judgments:
        assert j.trace["tool"] == "python" and j.trace["kind"] == "unit_tests"
        if "compile_error" in j.trace:
            assert j.critique.startswith("the code does not load") and j.score == 0.0
        else:
            assert "def _main" in j.trace["program"] and "containment" in j.trace["run"]
    assert any(j.score > 0 for j in judgments), [j.critique for j in judgments][:8]
