"""The engines are built lazily, in the process and stage that uses them (issue: every worker
used to build the full context, judge included, whatever its queue)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db.models import Response
from selfplay.stages.generate import generate_block, insert_prompts
from workers.tasks import worker_context


@pytest.mark.parametrize(
    "judge",
    [
        # An api judge whose key is not in this worker's environment.
        {"name": "api", "api": {"model": "judge", "api_key_env": "SELFPLAY_TEST_NO_SUCH_KEY"}},
        # A reward model that is not on this machine (it would be loaded on the worker's GPU).
        {"name": "reward_model", "reward_model": {"path": "/nonexistent/reward-model"}},
    ],
    ids=["api-without-key", "reward-model-absent"],
)
def test_a_generate_worker_never_builds_the_judge(
    round_store, db_url: str, judge: dict, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("SELFPLAY_TEST_NO_SUCH_KEY", raising=False)
    store = round_store(judge=judge)
    ctx = worker_context(db_url, store.run_id)  # the config as stored on the run
    try:
        insert_prompts(ctx, store.round_id)
        generate_block(ctx, store.round_id, 0)
        with store.sessions() as s:  # a block of 4 prompts × 2 samples
            assert s.scalar(select(func.count()).select_from(Response)) == 4 * 2
        # The name its judgments are stored under is known without building it.
        assert ctx.engines.judge_name == judge["name"]
    finally:
        ctx.close()


def test_building_the_judge_is_where_its_errors_surface(round_store, monkeypatch):
    monkeypatch.delenv("SELFPLAY_TEST_NO_SUCH_KEY", raising=False)
    store = round_store(
        judge={"name": "api", "api": {"model": "judge", "api_key_env": "SELFPLAY_TEST_NO_SUCH_KEY"}}
    )
    ctx = store.context()
    with pytest.raises(Exception, match="SELFPLAY_TEST_NO_SUCH_KEY"):
        ctx.engines.build_judge()
    ctx.close()
