"""The whole loop, for real: the CLI in a subprocess, SIGKILLed inside each stage and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from db import queries, summaries
from db.engine import make_engine, session_factory
from db.models import Checkpoint, Response, Round

pytestmark = pytest.mark.heavy

# The default tiny model (its SFT runs once per test session, then comes from the cache) on
# small rounds: seconds per run, and every stage still commits more than once.
SMALL = {
    "run": {"name": "small", "seed": 0, "rounds": 2},
    "task": {"prompts_per_round": 64, "heldout_size": 100},
    "generation": {"samples_per_prompt": 4, "prompts_per_batch": 16},
    "pairing": {"max_pairs_per_prompt": 2},
    # 8 epochs of batch 4 reach max_steps, so a metrics flush (every 50 steps) lands mid-training.
    "training": {"nll_weight": 1.0, "batch_size": 4, "max_steps": 60, "epochs": 8},
}


def write_config(tmp_path: Path, name: str, overrides: dict) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(overrides))
    cfg["run"]["output_dir"] = str(tmp_path / name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def selfplay(*args: str, kill_at: str | None = None, timeout: int = 600):
    env = dict(os.environ)
    env.pop("SELFPLAY_KILL_AT", None)
    if kill_at:
        env["SELFPLAY_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "selfplay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def store_state(output_dir: Path) -> tuple[dict[str, int], list[tuple[int, str, float | None]]]:
    engine = make_engine(f"sqlite:///{output_dir / 'selfplay.db'}")
    with session_factory(engine)() as s:
        run_id = queries.get_run(s, "small").id
        counts = summaries.count_rows(s, run_id)
        rounds = [
            (r.index, r.status, r.heldout_accuracy)
            for r in s.scalars(select(Round).where(Round.run_id == run_id).order_by(Round.index))
        ]
        # No response key twice (the unique constraint enforces it; this checks the data).
        dupes = s.scalar(
            select(func.count()).select_from(
                select(Response.prompt_id, Response.sample_index)
                .group_by(Response.round_id, Response.prompt_id, Response.sample_index)
                .having(func.count() > 1)
                .subquery()
            )
        )
        assert dupes == 0
        for ckpt in s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id)):
            assert (Path(ckpt.path) / "model.safetensors").exists()
        # Each done round's figures were stored as it finished (wall time differs run to run).
        stored = [
            {k: v for k, v in st.to_dict().items() if k != "wall_time_s"}
            for st in summaries.round_summaries(s, run_id)
            if st.status == "done"
        ]
        assert all(st["summarized"] for st in stored)
    engine.dispose()
    return counts, rounds, stored


# One SIGKILL inside each stage, in order: (SELFPLAY_KILL_AT, round index, status seen after).
KILLS = [
    ("generating:2", 0, "generating"),
    ("judging:2", 0, "judging"),
    ("pairing:1", 0, "pairing"),
    ("training:1", 0, "training"),  # after the reference log-probs are stored
    ("training:2", 0, "training"),  # after the first metrics flush, mid-optimisation
    ("evaluating:1", 0, "evaluating"),
    ("generating:1", 1, "generating"),  # and once in the second round
]


def test_sigkill_in_every_stage_then_resume_matches_uninterrupted_run(tmp_path):
    clean = selfplay("run", str(write_config(tmp_path, "clean", SMALL)))
    assert clean.returncode == 0, clean.stderr
    expected_counts, expected_rounds, expected_summaries = store_state(tmp_path / "clean")
    assert expected_counts["pairs"] > 0 and expected_counts["checkpoints"] == 3

    config = write_config(tmp_path, "crashy", SMALL)
    for kill_at, round_index, status in KILLS:
        proc = selfplay("run", str(config), kill_at=kill_at)
        assert proc.returncode == -signal.SIGKILL, (kill_at, proc.stderr)
        _, rounds, _ = store_state(tmp_path / "crashy")
        assert rounds[round_index][1] == status, (kill_at, rounds)
    resumed = selfplay("run", str(config))
    assert resumed.returncode == 0, resumed.stderr

    counts, rounds, summaries = store_state(tmp_path / "crashy")
    assert counts == expected_counts
    # Blocks are seeded and training restarts from the round's policy: same results exactly.
    assert rounds == expected_rounds
    assert summaries == expected_summaries and len(summaries) == 2
    assert all(status == "done" for _, status, _ in rounds)

    status = selfplay("status", "--db", f"sqlite:///{tmp_path / 'crashy' / 'selfplay.db'}")
    assert status.returncode == 0 and "done" in status.stdout


def test_two_rounds_raise_accuracy_by_ten_points(tmp_path):
    # The quickstart cut to its first 2 rounds must add ≥ 10 points. Fewer prompts per round is
    # not a safe reduction: half of them (fewer steps) took the SFT model from 0.258 to 0.07.
    cfg = yaml.safe_load((Path(__file__).parents[2] / "configs" / "quickstart.yaml").read_text())
    cfg["run"].update(name="small", rounds=2)
    proc = selfplay("run", str(write_config(tmp_path, "e2e", cfg)))
    assert proc.returncode == 0, proc.stderr
    assert "round 1:" in proc.stdout
    engine = make_engine(f"sqlite:///{tmp_path / 'e2e' / 'selfplay.db'}")
    with session_factory(engine)() as s:
        initial = queries.get_checkpoint(s, 1, -1).heldout_accuracy
        final = queries.get_checkpoint(s, 1, 1).heldout_accuracy
    engine.dispose()
    assert final - initial >= 0.10, (initial, final)


def test_bad_config_exits_2_naming_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  beta: 0\n")
    proc = selfplay("run", str(path))
    assert proc.returncode == 2
    assert "training.beta" in proc.stderr and "Traceback" not in proc.stderr


def test_changed_config_for_an_existing_run_is_refused(tmp_path):
    cfg = yaml.safe_load(yaml.safe_dump(SMALL))
    cfg["run"]["rounds"] = 1
    path = write_config(tmp_path, "changed", cfg)
    assert selfplay("run", str(path)).returncode == 0
    cfg["training"]["beta"] = 0.2
    path = write_config(tmp_path, "changed", cfg)
    proc = selfplay("run", str(path))
    assert proc.returncode == 2 and "training.beta" in proc.stderr
    assert "Traceback" not in proc.stderr
