"""The trainer's CUDA-only paths: run where a GPU is, skipped elsewhere.

On a GPU machine without the store's packages (sqlalchemy, which tests/conftest.py imports):
    python -m pytest --noconftest tests/selfplay/training/test_gpu.py
"""

import pytest
import torch

from selfplay.config import TrainingConfig
from selfplay.training import logprobs
from selfplay.training.logprobs import TokenLogps
from selfplay.training.trainer import PairExample, train_on_pairs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b).norm() / b.norm())


@pytest.mark.parametrize("saved", [True, False])
def test_token_logps_bf16_matches_float32(monkeypatch, saved):
    # A Qwen2-sized vocabulary, several chunks, the compiled kernels; float32 as the reference.
    if not saved:
        monkeypatch.setattr(logprobs, "HEAD_SAVE_BYTES", 0)
    gen = torch.Generator(device="cuda").manual_seed(0)
    n, v, h = 3000, 151936, 896
    hidden = torch.randn(n, h, device="cuda", generator=gen).bfloat16().requires_grad_()
    weight = (torch.randn(v, h, device="cuda", generator=gen) * 0.02).bfloat16().requires_grad_()
    targets = torch.randint(0, v, (n,), device="cuda", generator=gen)
    grad = torch.randn(n, device="cuda", generator=gen)
    h32, w32 = (x.detach().float().requires_grad_() for x in (hidden, weight))
    want = torch.log_softmax(h32 @ w32.T, -1)[torch.arange(n), targets]
    (want * grad).sum().backward()
    got = TokenLogps.apply(hidden, weight, targets)
    (got * grad).sum().backward()
    assert (got - want.detach()).abs().max() < 0.02
    assert _relative(hidden.grad, h32.grad) < 0.01
    assert _relative(weight.grad, w32.grad) < 0.01


def _small_qwen2():  # noqa: ANN202
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )


def _pairs(n: int) -> list[PairExample]:
    """`n` pairs of random prompts, one chosen response and random rejected ones."""
    gen = torch.Generator().manual_seed(1)

    def tokens(k: int) -> list[int]:
        return torch.randint(3, 1000, (k,), generator=gen).tolist()

    return [PairExample(tokens(6), [5, 6, 7], tokens(3), -20.0, -20.0) for _ in range(n)]


def test_bf16_weights_train_like_autocast():
    from transformers import Qwen2ForCausalLM

    config = _small_qwen2()
    pairs = _pairs(64)
    runs = []
    for bf16_weights in (False, True):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).cuda()
        history: list[dict] = []
        cfg = TrainingConfig(lr=1e-3, batch_size=16, max_steps=40, epochs=20)
        cfg = cfg.model_copy(update={"bf16_weights": bf16_weights})
        train_on_pairs(model, pairs, cfg, 0, 0, on_step=lambda s, m, h=history: h.append(m))
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        runs.append(history)
    autocast, bf16 = runs
    assert bf16[-1]["preference_accuracy"] == 1.0
    assert bf16[-1]["loss"] < 0.1 * bf16[0]["loss"]
    for a, b in zip(autocast[:10], bf16[:10], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.02, abs=1e-3)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=0.02)


def test_one_fsdp_rank_on_the_gpu_trains_like_the_single_device_path(tmp_path):
    # torchrun, nccl, fully_shard with bf16 parameters and float32 reduction, rank 0's gathered
    # save in the policy's dtype: the launcher's whole path on one GPU, against the in-process
    # bf16 autocast path on the same pairs and seed.
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

    from selfplay.tiny_model import build_tokenizer
    from selfplay.training.distributed import Job, train_distributed

    torch.manual_seed(0)
    Qwen2ForCausalLM(_small_qwen2()).save_pretrained(tmp_path / "policy")
    build_tokenizer().save_pretrained(tmp_path / "policy")
    pairs = _pairs(32)
    training = {"lr": 1e-3, "batch_size": 8, "max_steps": 8, "epochs": 2}
    cfg = TrainingConfig(**training)
    single: list[dict] = []
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").cuda()
    train_on_pairs(model, pairs, cfg, 0, 0, on_step=lambda s, m: single.append(m))
    ranked: list[dict] = []
    fsdp = TrainingConfig(**training, distributed={"strategy": "fsdp", "nproc": 1})
    job = Job(str(tmp_path / "policy"), pairs, fsdp, 0, 0, str(tmp_path / "out"), "bfloat16")
    train_distributed(job, tmp_path / "job", lambda s, m: ranked.append(m))
    assert len(ranked) == len(single) == 8
    for a, b in zip(single, ranked, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.03, abs=2e-3)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert saved.dtype == torch.bfloat16
    initial = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").state_dict()
    trained = {name: value.cpu() for name, value in model.state_dict().items()}
    # The ranks' bf16 parameters and the single path's autocast round differently, and AdamW's
    # sign-like first steps turn that into different updates of the smallest gradients (a
    # k_proj bias: 0.36 of its move): the two trainings moved the whole model the same way.
    apart = sum((v.float() - trained[k]).norm() ** 2 for k, v in saved.state_dict().items())
    moved = sum((trained[k] - initial[k]).norm() ** 2 for k in trained)
    assert apart**0.5 < 0.25 * moved**0.5
