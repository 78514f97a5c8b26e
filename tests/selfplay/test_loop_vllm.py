"""A full (reduced) quickstart round with `generation.backend: vllm`, through the CLI."""

import os
import subprocess
import sys

import pytest
import yaml
from sqlalchemy import select

from db import queries
from db.engine import make_engine, session_factory
from db.models import Checkpoint, Metric, Response, Round
from db.summaries import count_rows
from selfplay.config import TaskConfig
from selfplay.generation import HFBackend, SamplingParams
from selfplay.tasks import make_task

pytestmark = pytest.mark.heavy

# SMALL of test_loop_e2e.py, one round, on a vLLM engine sized for a shared CPU box.
CONFIG = {
    "run": {"name": "small", "seed": 0, "rounds": 1},
    "task": {"prompts_per_round": 64, "heldout_size": 100},
    # A short SFT of its own (the default one takes minutes on a busy 2-core box).
    "model": {"sft": {"steps": 400, "target_accuracy": 0.1}},
    "generation": {
        "backend": "vllm",
        "samples_per_prompt": 4,
        "prompts_per_batch": 16,
        "engine": {"gpu_memory_utilization": 0.05, "enforce_eager": True},
    },
    "pairing": {"max_pairs_per_prompt": 2},
    "training": {"nll_weight": 1.0, "batch_size": 4, "max_steps": 60, "epochs": 8},
}


def _hf_eval(path: str, task_cfg: TaskConfig) -> tuple[float, float]:
    """(held-out greedy accuracy, mean response tokens) of a checkpoint, by the hf backend."""
    task = make_task(task_cfg, 0)
    prompts = task.heldout_prompts()
    hf = HFBackend()
    hf.load(path)
    outputs = [s for (s,) in hf.generate(prompts, SamplingParams(temperature=0))]
    correct = sum(task.verify(p, s.text)[0] for p, s in zip(prompts, outputs, strict=True))
    return correct / len(prompts), sum(len(s.token_ids) for s in outputs) / len(prompts)


def test_quickstart_round_with_the_vllm_backend(tmp_path):
    CONFIG["run"]["output_dir"] = str(tmp_path / "out")
    config = tmp_path / "vllm.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    proc = subprocess.run(
        [sys.executable, "-m", "selfplay", "run", str(config)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=1800,  # minutes on an idle box; a 4-way shared 2-core box took ~15
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "round 0:" in proc.stdout + proc.stderr

    engine = make_engine(f"sqlite:///{tmp_path / 'out' / 'selfplay.db'}")
    with session_factory(engine)() as s:
        run_id = queries.get_run(s, "small").id
        (rnd,) = s.scalars(select(Round).where(Round.run_id == run_id))
        assert rnd.status == "done" and count_rows(s, run_id)["pairs"] > 0
        responses = list(s.scalars(select(Response).where(Response.round_id == rnd.id)))
        assert len(responses) == 64 * 4
        assert all(r.logprob < 0 and r.num_tokens == len(r.token_ids) for r in responses)
        assert {r.finish_reason for r in responses} <= {"stop", "length"}
        stored = {
            c.round_index: (c.path, c.heldout_accuracy)
            for c in s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id))
        }
        lengths = {
            m.round_index: m.value
            for m in s.scalars(
                select(Metric).where(Metric.run_id == run_id, Metric.name == "heldout_mean_tokens")
            )
        }
    engine.dispose()
    # vLLM evaluated the SFT policy, then the round's new checkpoint (loaded after training):
    # its greedy decoding equals hf's, so each stored figure is exactly what hf measures on
    # that checkpoint, and the two checkpoints answer differently.
    task_cfg = TaskConfig(prompts_per_round=64, heldout_size=100)
    expected = {index: _hf_eval(stored[index][0], task_cfg) for index in (-1, 0)}
    assert expected[-1] != expected[0]
    for index in (-1, 0):
        assert (stored[index][1], lengths[index]) == expected[index]
