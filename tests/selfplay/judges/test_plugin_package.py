"""A third-party judge package (examples/selfplay-example-judge), installed and used in a run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db.engine import make_engine, session_factory
from db.models import Judgment, Pair

pytestmark = pytest.mark.heavy

EXAMPLE = Path(__file__).parents[3] / "examples" / "selfplay-example-judge"

CONFIG = {
    "run": {"name": "plugin", "seed": 0, "rounds": 1},
    # The short SFT of test_algorithms_e2e (one cache entry for both): this test checks the
    # plug-in's judgments, not accuracy.
    "model": {"sft": {"steps": 150, "target_accuracy": None}},
    "task": {"prompts_per_round": 32, "heldout_size": 50},
    "generation": {"samples_per_prompt": 4, "prompts_per_batch": 16},
    "judge": {"name": "concise_verifier", "options": {"length_penalty": 0.05}},
    "training": {"nll_weight": 1.0, "batch_size": 4, "max_steps": 10},
}


def _selfplay(args: list[str], pythonpath: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [sys.executable, "-m", "selfplay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_installed_plugin_judges_a_real_round(tmp_path: Path):
    config = dict(CONFIG, run=dict(CONFIG["run"], output_dir=str(tmp_path / "out")))
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(config))

    # Not installed: the config is refused before anything runs, naming the field.
    missing = _selfplay(["run", str(path)], pythonpath=None)
    assert missing.returncode == 2
    assert "judge.name: unknown judge 'concise_verifier'" in missing.stderr + missing.stdout

    # Built from a copy: pip's in-tree build would leave build/ and *.egg-info in the repository.
    source = tmp_path / "example"
    shutil.copytree(EXAMPLE, source)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        check=True,
        timeout=300,
    )  # fmt: skip
    done = _selfplay(["run", str(path)], pythonpath=str(site))
    assert done.returncode == 0, done.stderr[-3000:]

    engine = make_engine(f"sqlite:///{tmp_path / 'out' / 'selfplay.db'}")
    with session_factory(engine)() as s:
        judgments = s.scalars(select(Judgment)).all()
        assert judgments and {j.judge for j in judgments} == {"concise_verifier"}
        for j in judgments:  # the plug-in's score: correct − 0.05 · characters
            assert j.status == "ok"
            expected = float(j.trace["correct"]) - 0.05 * j.trace["length"]
            assert j.score == pytest.approx(expected)
        assert s.scalars(select(Pair)).first() is not None
    engine.dispose()
