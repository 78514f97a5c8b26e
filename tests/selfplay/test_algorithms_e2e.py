"""Every round procedure, for real, at a small size: 2 rounds through the embedded driver."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import queries
from db.engine import make_engine, session_factory
from db.models import Checkpoint, Judgment, Pair, Response, ResponseLogprob, Round
from selfplay.algorithms import ALGORITHM_PRESETS
from selfplay.config import parse_config
from selfplay.driver import run_loop

pytestmark = pytest.mark.heavy

SMALL = {
    # A short SFT (its own cache entry): these tests check the procedures run, not accuracy.
    "model": {"sft": {"steps": 150, "target_accuracy": None}},
    "task": {"prompts_per_round": 48, "heldout_size": 50},
    "generation": {"samples_per_prompt": 4, "prompts_per_batch": 24},
    "training": {"batch_size": 8, "max_steps": 8, "epochs": 1, "lr": 1e-4},
    "guards": {"heldout_samples": True},
}


def small_config(tmp_path: Path, algorithm: str, **extra: dict) -> dict:
    data = {k: dict(v) for k, v in SMALL.items()}
    data["run"] = {"name": algorithm, "seed": 0, "rounds": 2, "output_dir": str(tmp_path)}
    data["algorithm"] = algorithm
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return data


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_PRESETS))
def test_every_algorithm_runs_two_rounds(tmp_path: Path, algorithm: str):
    extra = {"pairing": {"replay": [0.5]}} if algorithm == "dno" else {}
    if algorithm == "xpo":
        extra = {"generation": {"samples_per_prompt": 2, "reference_samples": 2}}
    if algorithm == "self_rewarding":
        # A short judge prompt and answer: the full additive prompt × 3 repeats takes minutes.
        template = "Rate 0-5. {prompt}{response} Score:"
        extra = {"judge": {"self_judge": {"prompt_template": template, "max_new_tokens": 8}}}
    cfg = parse_config(small_config(tmp_path, algorithm, **extra))
    summaries = run_loop(cfg)
    assert [s.status for s in summaries] == ["done", "done"]
    assert all(s.heldout_accuracy is not None for s in summaries)

    engine = make_engine(cfg.db_url)
    with session_factory(engine)() as s:
        run_id = queries.get_run(s, algorithm).id
        rounds = s.scalars(select(Round).where(Round.run_id == run_id).order_by(Round.index)).all()
        assert all(r.output_checkpoint_id is not None for r in rounds)
        pairs = s.scalars(select(Pair).where(Pair.round_id.in_([r.id for r in rounds]))).all()
        if algorithm == "self_rewarding":
            # The policy judges its own samples, 3 times each, with the checkpoint of the round.
            for rnd in rounds:
                judgments = s.scalars(
                    select(Judgment)
                    .join(Response, Response.id == Judgment.response_id)
                    .where(Response.round_id == rnd.id)
                ).all()
                assert {j.judge for j in judgments} == {"self"}
                assert {j.repeat for j in judgments} == {0, 1, 2}
                policy = s.get(Checkpoint, rnd.policy_checkpoint_id).path
                assert all(j.trace["checkpoint"] == policy for j in judgments)
                assert all(
                    j.status == "ok" or j.trace["judge_output"] is not None for j in judgments
                )
        else:
            # (The tiny arithmetic policy rarely writes a parseable score when it judges.)
            assert pairs, "every procedure makes pairs on this task"
            assert cfg.pairing.builder in {p.builder for p in pairs}
        builders = {p.builder for p in pairs}
        if algorithm == "dno":
            # Round 1 replays half as many pairs as it built itself from round 0.
            assert any(b.startswith("replay:") for b in builders)
            replayed = [p for p in pairs if p.builder.startswith("replay:")]
            assert all(p.round_id == rounds[1].id for p in replayed)
        if algorithm == "sppo":
            assert all(0 <= p.chosen_target <= 1 and 0 <= p.rejected_target <= 1 for p in pairs)
            assert all(p.chosen_target >= p.rejected_target for p in pairs)
        if algorithm == "xpo":
            sft = queries.get_checkpoint(s, run_id, -1)
            ref_samples = s.scalars(
                select(Response).where(
                    Response.round_id == rounds[1].id, Response.sample_index >= 2
                )
            ).all()
            assert ref_samples and all(r.checkpoint_id == sft.id for r in ref_samples)
            by_id = {r.id: r for r in s.scalars(select(Response)).all()}
            for p in pairs:  # one policy sample and one reference sample per pair
                idx = {by_id[p.chosen_id].sample_index >= 2, by_id[p.rejected_id].sample_index >= 2}
                assert idx == {True, False}
        if algorithm == "inpo":
            # Round 1 needs S_ref (SFT) and S_t (round 0's output): two checkpoints' log-probs.
            ckpts = set(
                s.scalars(
                    select(ResponseLogprob.checkpoint_id)
                    .join(Response, Response.id == ResponseLogprob.response_id)
                    .where(Response.round_id == rounds[1].id)
                )
            )
            assert len(ckpts) == 2
        if algorithm in ("simpo", "rft"):
            assert s.scalar(select(func.count()).select_from(ResponseLogprob)) == 0
        n_ckpt = s.scalar(
            select(func.count()).select_from(Checkpoint).where(Checkpoint.run_id == run_id)
        )
        assert n_ckpt == 3
    engine.dispose()
