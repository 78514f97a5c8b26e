"""Reference/π_t scoring over 2 CPU ranks (gloo) under torch.distributed.run: the ranks' log-probs
are the one-process Scorer's, delivered chunk by chunk in order, and a rank that dies fails the
scoring, which a re-run of what is missing completes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfplay.config import TinyModelConfig
from selfplay.scoring import Scorer
from selfplay.tasks.base import Prompt
from selfplay.tiny_model import build_model, build_tokenizer
from selfplay.training.distributed import RankFailure, ScoreJob, score_distributed

# 7 responses in chunks of 3 over 2 ranks: slices of 2 and 1, and the last chunk of one
# response leaves rank 1 nothing.
CHUNK = 3
PROMPTS = ["1 + 2 =", "3 + 4 =", "1 + 2 =", "5 + 6 =", "3 + 4 =", "7 + 8 =", "1 + 2 ="]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random tiny Llama with its tokenizer."""
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(
        TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok
    )
    path = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def responses() -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(4, 90, (2 + i % 4,), generator=gen).tolist() + [2] for i in range(7)]


@pytest.fixture(scope="module")
def one_process(checkpoint: Path, responses: list[list[int]]) -> list[float]:
    """What the train stage stores when it scores on one device."""
    return Scorer(str(checkpoint)).score([Prompt(p) for p in PROMPTS], responses)


def run_ranks(
    checkpoint: Path,
    indices: list[int],
    responses: list[list[int]],
    job_dir: Path,
    got: dict[int, float],
) -> None:
    """Score responses `indices` on 2 ranks into `got`, by index, as the chunks come."""

    def on_chunk(start: int, values: list[float]) -> None:
        assert len(values) == min(CHUNK, len(indices) - start)
        for k, value in enumerate(values):
            assert indices[start + k] not in got
            got[indices[start + k]] = value

    job = ScoreJob(
        str(checkpoint),
        "auto",
        "auto",
        [(PROMPTS[i], None) for i in indices],
        [responses[i] for i in indices],
        2,
        CHUNK,
    )
    score_distributed(job, job_dir, on_chunk)


def test_two_ranks_score_what_one_process_scores(checkpoint, responses, one_process, tmp_path):
    got: dict[int, float] = {}
    run_ranks(checkpoint, list(range(len(responses))), responses, tmp_path / "job", got)
    assert sorted(got) == list(range(len(responses)))
    assert [got[i] for i in range(len(responses))] == pytest.approx(one_process, abs=1e-5)
    assert not (tmp_path / "job").exists()  # removed on success


def test_a_rank_killed_mid_scoring_fails_it_and_a_rerun_of_the_rest_completes(
    checkpoint, responses, one_process, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    every = list(range(len(responses)))
    got: dict[int, float] = {}
    monkeypatch.setenv("SELFPLAY_KILL_AT", "score-rank1:2")  # rank 1, after its 2nd chunk
    with pytest.raises(RankFailure, match=r"(?s)scoring failed.*Root Cause.*rank *: 1 .*SIGKILL"):
        run_ranks(checkpoint, every, responses, tmp_path / "job", got)
    monkeypatch.delenv("SELFPLAY_KILL_AT")
    assert (tmp_path / "job" / "torchrun.log").exists()  # kept for the post-mortem
    # whole chunks came before the failure (rank 0 may have written the 2nd: it is gathered
    # before rank 1 dies), and not the last: rank 1 never took part in it
    assert sorted(got) in (every[:CHUNK], every[: 2 * CHUNK])
    rest = [i for i in every if i not in got]  # what the stage re-scores: the missing ones
    run_ranks(checkpoint, rest, responses, tmp_path / "job", got)
    assert [got[i] for i in every] == pytest.approx(one_process, abs=1e-5)
