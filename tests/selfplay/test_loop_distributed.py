"""The loop with training on 2 CPU ranks (gloo), through the CLI: two FSDP2 rounds end to end, a
rank SIGKILLed mid-training fails the round, which a re-run completes with the rows of an
uninterrupted run; LoRA rounds on DDP ranks save adapters the next round's stages load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db import queries, summaries
from db.engine import make_engine, session_factory
from db.models import Metric, Round
from selfplay.adapters import adapter_base, is_adapter

pytestmark = pytest.mark.heavy

# An untrained tiny model (no SFT) on small rounds: the ranks' launch is most of the time.
SMALL = {
    "run": {"name": "ranks", "seed": 0, "rounds": 2},
    "model": {
        "tiny": {"hidden_size": 32, "num_layers": 2, "intermediate_size": 64},
        "sft": {"steps": 0},
    },
    "task": {"prompts_per_round": 16, "heldout_size": 8},
    "generation": {"samples_per_prompt": 4, "prompts_per_batch": 8, "max_new_tokens": 6},
    "evaluation": {"batch_size": 8},
    # An untrained model answers nothing right: a judge of how many distinct characters a
    # response holds still ranks its samples (they are all max_new_tokens long).
    "judge": {"name": "distinct_judge:Distinct"},
    "pairing": {"truncated": "keep"},  # it rarely ends a response before max_new_tokens
    "training": {
        "loss": "dpo",
        "nll_weight": 0.5,
        "batch_size": 5,
        "max_steps": 6,
        "epochs": 3,
        "distributed": {"strategy": "fsdp", "nproc": 2},
    },
}


DISTINCT_JUDGE = """
from selfplay.judges import BaseJudge, Verdict


class Distinct(BaseJudge):
    name = "distinct"

    def __init__(self, cfg, env):
        pass

    def judge(self, items):
        return [Verdict("ok", score=float(len(set(i.response)))) for i in items]
"""


def selfplay_run(config: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SELFPLAY_KILL_AT"}
    env["PYTHONPATH"] = os.pathsep.join([str(config.parent), env.get("PYTHONPATH", "")])
    if kill_at:
        env["SELFPLAY_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "selfplay", "run", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_config(tmp_path: Path, name: str, training: dict | None = None) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(SMALL))
    cfg["training"].update(training or {})
    cfg["run"]["output_dir"] = str(tmp_path / name)
    (tmp_path / "distinct_judge.py").write_text(DISTINCT_JUDGE)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def store_state(output_dir: Path) -> tuple[dict, list, list, list]:
    """Row counts, each round's (index, status, error), the done rounds' summaries and the
    training metrics."""
    engine = make_engine(f"sqlite:///{output_dir / 'selfplay.db'}")
    with session_factory(engine)() as s:
        run_id = queries.get_run(s, "ranks").id
        counts = summaries.count_rows(s, run_id)
        rounds = [
            (r.index, r.status, r.error)
            for r in s.scalars(select(Round).where(Round.run_id == run_id).order_by(Round.index))
        ]
        done = [
            {k: v for k, v in st.to_dict().items() if k != "wall_time_s"}
            for st in summaries.round_summaries(s, run_id)
            if st.status == "done"
        ]
        metrics = sorted(
            (m.round_index, m.step, m.name, m.value)
            for m in s.scalars(select(Metric).where(Metric.stage == "train"))
        )
    engine.dispose()
    return counts, rounds, done, metrics


def test_two_rounds_on_two_ranks_and_a_killed_rank_resumes_to_the_same_rows(tmp_path: Path):
    clean = selfplay_run(write_config(tmp_path, "clean"))
    assert clean.returncode == 0, clean.stderr
    counts, rounds, done, metrics = store_state(tmp_path / "clean")
    assert [(i, status) for i, status, _ in rounds] == [(0, "done"), (1, "done")]
    assert counts["checkpoints"] == 3 and len(done) == 2
    assert {(r, step) for r, step, _, _ in metrics} == {(r, s) for r in (0, 1) for s in range(1, 7)}
    for i in (0, 1):
        assert (tmp_path / "clean" / "checkpoints" / f"round-{i:04d}" / "config.json").exists()

    crashy = write_config(tmp_path, "crashy")
    killed = selfplay_run(crashy, kill_at="train-rank1:3")  # rank 1 after its 3rd step
    assert killed.returncode != 0
    _, rounds, _, _ = store_state(tmp_path / "crashy")
    assert rounds[0][1] == "failed" and "RankFailure" in rounds[0][2], rounds
    assert not (tmp_path / "crashy" / "checkpoints" / "round-0000").exists()
    resumed = selfplay_run(crashy)
    assert resumed.returncode == 0, resumed.stderr
    assert store_state(tmp_path / "crashy")[0] == counts
    # Seeded stages and a deterministic restart of the training: the same rows exactly.
    _, rounds_after, done_after, metrics_after = store_state(tmp_path / "crashy")
    assert [(i, s) for i, s, _ in rounds_after] == [(0, "done"), (1, "done")]
    assert done_after == done
    assert metrics_after == metrics


def test_lora_rounds_on_two_ranks_save_adapters_the_next_round_loads(tmp_path: Path):
    lora = {
        "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        "distributed": {"strategy": "ddp", "nproc": 2},
    }
    run = selfplay_run(write_config(tmp_path, "lora", lora))
    assert run.returncode == 0, run.stderr
    counts, rounds, done, metrics = store_state(tmp_path / "lora")
    assert [(i, status) for i, status, _ in rounds] == [(0, "done"), (1, "done")]
    assert len(done) == 2 and {r for r, _, _, _ in metrics} == {0, 1}
    for i in (0, 1):  # round 1 generated, scored and trained from round 0's adapters
        saved = tmp_path / "lora" / "checkpoints" / f"round-{i:04d}"
        assert is_adapter(saved) and not (saved / "model.safetensors").exists()
        assert adapter_base(saved) == adapter_base(saved.with_name("round-0000"))
