"""A full (reduced) quickstart round with `generation.backend: vllm`, through the CLI."""

import os
import subprocess
import sys

import pytest
import yaml
from sqlalchemy import select

from db import queries
from db.engine import make_engine, session_factory
from db.models import Checkpoint, Response, Round
from selfplay.config import TaskConfig
from selfplay.generation import HFBackend, SamplingParams
from selfplay.tasks import make_task

pytestmark = pytest.mark.heavy

# SMALL of test_loop_e2e.py, one round, on a vLLM engine sized for a shared CPU box.
CONFIG = {
    "run": {"name": "small", "seed": 0, "rounds": 1},
    "task": {"prompts_per_round": 64, "heldout_size": 100},
    "generation": {
        "backend": "vllm",
        "samples_per_prompt": 4,
        "prompts_per_batch": 16,
        "engine": {"gpu_memory_utilization": 0.05, "enforce_eager": True},
    },
    "pairing": {"max_pairs_per_prompt": 2},
    "training": {"nll_weight": 1.0, "batch_size": 4, "max_steps": 60, "epochs": 8},
}


def _hf_accuracy(path: str, task_cfg: TaskConfig) -> float:
    task = make_task(task_cfg, 0)
    prompts = task.heldout_prompts()
    hf = HFBackend()
    hf.load(path)
    outputs = hf.generate([p.text for p in prompts], SamplingParams(temperature=0))
    return sum(task.verify(p, s.text)[0] for p, (s,) in zip(prompts, outputs, strict=True)) / len(
        prompts
    )


def test_quickstart_round_with_the_vllm_backend(tmp_path):
    CONFIG["run"]["output_dir"] = str(tmp_path / "out")
    config = tmp_path / "vllm.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    proc = subprocess.run(
        [sys.executable, "-m", "selfplay", "run", str(config)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "round 0:" in proc.stdout + proc.stderr

    engine = make_engine(f"sqlite:///{tmp_path / 'out' / 'selfplay.db'}")
    with session_factory(engine)() as s:
        run_id = queries.get_run(s, "small").id
        (rnd,) = s.scalars(select(Round).where(Round.run_id == run_id))
        assert rnd.status == "done" and queries.count_rows(s, run_id)["pairs"] > 0
        responses = list(s.scalars(select(Response).where(Response.round_id == rnd.id)))
        assert len(responses) == 64 * 4
        assert all(r.logprob < 0 and r.num_tokens == len(r.token_ids) for r in responses)
        assert {r.finish_reason for r in responses} <= {"stop", "length"}
        ckpts = {
            c.round_index: c
            for c in s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id))
        }
    engine.dispose()
    # vLLM evaluated both the SFT policy and the round's new checkpoint (loaded after training):
    # greedy decoding equals hf's, so each stored accuracy is exactly what hf measures on it.
    task_cfg = TaskConfig(prompts_per_round=64, heldout_size=100)
    for index in (-1, 0):
        assert ckpts[index].heldout_accuracy == _hf_accuracy(ckpts[index].path, task_cfg)
    assert ckpts[0].heldout_accuracy != ckpts[-1].heldout_accuracy
