"""Training over 2 CPU ranks (gloo) under torch.distributed.run: DDP and FSDP2 take the steps one
rank takes on the same global batches and save the policy's generation config, and a rank that
dies fails the training, which a re-run then completes; more ranks than GPUs fail before any is
launched."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, GenerationConfig

from selfplay.config import TinyModelConfig
from selfplay.tiny_model import build_model, build_tokenizer
from selfplay.training.config import TrainingConfig
from selfplay.training.distributed import Job, RankFailure, train_distributed, wrap
from selfplay.training.logprobs import build_batch, sequence_logprobs
from selfplay.training.trainer import PairExample, train_on_pairs

PAD = 0
# 11 pairs in batches of 5 over 2 ranks: slices of 3 and 2, and each epoch's last batch of one
# pair leaves rank 1 nothing (it runs the weight-0 stand-in).
TRAINING = {"lr": 1e-2, "batch_size": 5, "max_steps": 6, "epochs": 2, "nll_weight": 0.5}


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random tiny Llama (tied embeddings, 2 layers) with its tokenizer; its generation
    config stops at two EOS ids, as Qwen-instruct checkpoints' do (config.json names one)."""
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(
        TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok
    )
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.unk_token_id]
    path = tmp_path_factory.mktemp("policy")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pairs() -> list[PairExample]:
    gen = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(4, 90, (n,), generator=gen).tolist()

    return [
        PairExample(ids(3 + i % 4), ids(2 + i % 3) + [2], ids(1 + i % 5) + [2], -3.0, -4.0)
        for i in range(11)
    ]


@pytest.fixture(scope="module")
def one_rank(policy: Path, pairs: list[PairExample]) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The in-process single-device run: each step's metrics and the final weights."""
    model = AutoModelForCausalLM.from_pretrained(policy)
    history: list[dict] = []
    train_on_pairs(
        model,
        pairs,
        TrainingConfig(**TRAINING),
        PAD,
        seed=1,
        on_step=lambda s, m: history.append(m),
    )
    return history, model.state_dict()


def run_ranks(
    policy: Path,
    pairs: list[PairExample],
    out: Path,
    strategy: str,
    nproc: int = 2,
    **overrides: object,
) -> list[dict]:
    cfg = TrainingConfig(
        **TRAINING, **overrides, distributed={"strategy": strategy, "nproc": nproc}
    )
    history: list[dict] = []
    job = Job(str(policy), pairs, cfg, PAD, 1, str(out / "checkpoint"))
    train_distributed(job, out / "job", lambda step, m: history.append(m))
    return history


def saved_weights(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.mark.parametrize(
    ("strategy", "overrides"),
    [
        ("ddp", {}),
        ("fsdp", {}),
        # the ranks' slices cut into different numbers of pieces, layers recomputed
        ("fsdp", {"max_tokens_per_micro_batch": 20, "gradient_checkpointing": True}),
    ],
)
def test_two_ranks_take_the_steps_of_one(
    strategy, overrides, policy, pairs, one_rank, tmp_path: Path
):
    expected, weights = one_rank
    history = run_ranks(policy, pairs, tmp_path, strategy, **overrides)
    assert len(history) == len(expected) == 6
    for got, want in zip(history, expected, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    trained = saved_weights(tmp_path / "checkpoint")
    assert trained.keys() == weights.keys()
    # The ranks' gradients are summed in another order, the last bits differ, and AdamW turns
    # that into weight differences of ~1e-5 of its lr = 1e-2 steps (2e-5 seen).
    for name, value in weights.items():
        torch.testing.assert_close(trained[name], value, rtol=1e-4, atol=1e-4)
    saved = GenerationConfig.from_pretrained(tmp_path / "checkpoint")
    assert saved.eos_token_id == [2, 3]
    assert saved.to_dict() == GenerationConfig.from_pretrained(policy).to_dict()
    assert not (tmp_path / "job").exists()  # removed on success


def test_a_rank_killed_mid_training_fails_it_and_a_rerun_completes(
    policy, pairs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    clean = run_ranks(policy, pairs, tmp_path / "clean", "ddp")
    monkeypatch.setenv("SELFPLAY_KILL_AT", "train-rank1:2")  # rank 1, after its 2nd step
    with pytest.raises(RankFailure, match=r"(?s)Root Cause.*rank *: 1 .*SIGKILL"):
        run_ranks(policy, pairs, tmp_path / "killed", "ddp")
    assert not (tmp_path / "killed" / "checkpoint").exists()
    assert (tmp_path / "killed" / "job" / "torchrun.log").exists()  # kept for the post-mortem
    monkeypatch.delenv("SELFPLAY_KILL_AT")
    assert run_ranks(policy, pairs, tmp_path / "killed", "ddp") == clean
    rerun, uninterrupted = (saved_weights(tmp_path / d / "checkpoint") for d in ("killed", "clean"))
    for name, value in uninterrupted.items():
        assert torch.equal(rerun[name], value), name


def test_a_rank_that_raises_fails_training_with_its_traceback(policy, tmp_path: Path):
    beyond_vocab = [PairExample([1, 10_000], [5, 2], [6, 2])]
    with pytest.raises(RankFailure, match=r"(?s)rank-0 raised:\nTraceback.*IndexError"):
        run_ranks(policy, beyond_vocab, tmp_path, "fsdp", nproc=1)
    assert not (tmp_path / "checkpoint").exists()


def test_more_ranks_than_gpus_fail_before_any_rank_is_launched(
    policy, pairs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,3")
    with pytest.raises(
        RankFailure,
        match=r"^training.distributed.nproc is 4 but this node has 2 visible GPU\(s\) "
        r"\(CUDA_VISIBLE_DEVICES=0,3\); .* at most 2$",
    ):
        run_ranks(policy, pairs, tmp_path, "ddp", nproc=4)
    assert not (tmp_path / "job").exists()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(RankFailure, match=r"nproc is 3 but this node has 2 visible GPU\(s\);"):
        run_ranks(policy, pairs, tmp_path, "fsdp", nproc=3)


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    """A gloo process group of this process alone."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_wrapped_model_takes_log_probs_from_its_hidden_states(
    strategy, policy, pairs, one_rank_group
):
    # The wrapper's forward runs (its hooks) with one position's logits, the lm_head meets
    # only the response tokens' hidden states (TokenLogps), and the values and gradients are
    # the unwrapped model's.
    cfg = TrainingConfig(distributed={"strategy": strategy, "nproc": 1})
    plain = AutoModelForCausalLM.from_pretrained(policy)
    wrapped = wrap(AutoModelForCausalLM.from_pretrained(policy), cfg, torch.device("cpu"))
    widths: list[int] = []
    wrapped.get_output_embeddings().register_forward_hook(
        lambda _m, _a, out: widths.append(out.shape[1])
    )
    batch = build_batch([p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs], PAD)
    values = {}
    for name, model in (("plain", plain), ("wrapped", wrapped)):
        out = sequence_logprobs(model, *batch)
        (out * torch.linspace(-1, 2, len(out))).sum().backward()
        values[name] = out.detach()
    assert widths == [1]  # the [N, R, V] logits never existed
    torch.testing.assert_close(values["wrapped"], values["plain"], rtol=1e-5, atol=1e-5)
    inner = wrapped.module if strategy == "ddp" else wrapped
    for (name, a), b in zip(inner.named_parameters(), plain.parameters(), strict=True):
        grad = a.grad.full_tensor() if strategy == "fsdp" else a.grad
        torch.testing.assert_close(grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
