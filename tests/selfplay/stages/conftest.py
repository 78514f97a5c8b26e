"""A store holding one round of an untrained tiny model (no SFT: seconds), for the stage tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, session_factory, transaction
from db.migrate import upgrade
from db.models import Round
from selfplay.config import SelfplayConfig, parse_config
from selfplay.driver import ensure_initial_checkpoint, ensure_round, ensure_run
from selfplay.progress import SilentReporter
from selfplay.stages import Context

TINY = {
    "model": {
        "tiny": {"hidden_size": 32, "num_layers": 1, "intermediate_size": 64},
        "sft": {"steps": 0},
    },
    "task": {"prompts_per_round": 8, "heldout_size": 6},
    "generation": {"samples_per_prompt": 2, "prompts_per_batch": 4, "max_new_tokens": 8},
    "evaluation": {"batch_size": 4},
    # An untrained model never ends its answer before max_new_tokens: pair its truncated samples.
    "pairing": {"truncated": "keep"},
}


LENGTH_JUDGE = """
from selfplay.judges import BaseJudge, Verdict


class Length(BaseJudge):
    name = "length"

    def __init__(self, cfg, env):
        pass

    def judge(self, items):
        return [Verdict("ok", score=float(len(i.response))) for i in items]
"""


@pytest.fixture
def length_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "length_judge.py").write_text(LENGTH_JUDGE)
    monkeypatch.syspath_prepend(str(tmp_path))


@dataclass
class RoundStore:
    """Round 0 of run `stages` over an untrained tiny model; its output checkpoint is the
    initial model when `trained` (as if the train stage had run)."""

    cfg: SelfplayConfig
    sessions: sessionmaker[Session]
    run_id: int
    round_id: int

    def context(self) -> Context:
        """A fresh context, as a new process (a worker, a resumed driver) builds it."""
        return Context(self.cfg, self.sessions, self.run_id, SilentReporter())


@pytest.fixture
def round_store(tmp_path: Path, db_url: str) -> Iterator[Callable[..., RoundStore]]:
    """`round_store(judge={...}, trained=False, **sections)`: a RoundStore with that config
    (each section's keys update the tiny defaults)."""
    engines = []

    def build(judge: dict | None = None, trained: bool = False, **sections: dict) -> RoundStore:
        data = {key: dict(value) for key, value in TINY.items()}
        for key, value in sections.items():
            data[key] = {**data.get(key, {}), **value}
        data["run"] = {"name": "stages", "seed": 0, "output_dir": str(tmp_path / "out")}
        data["store"] = {"url": db_url}
        if judge is not None:
            data["judge"] = judge
        cfg = parse_config(data)
        engine = make_engine(db_url)
        engines.append(engine)
        upgrade(engine)
        sessions = session_factory(engine)
        ctx = Context(cfg, sessions, ensure_run(sessions, cfg), SilentReporter())
        initial = ensure_initial_checkpoint(ctx)
        round_id = ensure_round(ctx, 0)
        if trained:
            with transaction(sessions) as s:
                s.get(Round, round_id).output_checkpoint_id = initial
        ctx.close()
        return RoundStore(cfg, sessions, ctx.run_id, round_id)

    yield build
    for engine in engines:
        engine.dispose()
