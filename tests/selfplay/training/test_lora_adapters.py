"""LoRA rounds save their adapters (PEFT format) unless `training.lora.merge`: the hf backend
and transformers load them onto their base, the next round trains them on, and the ranks of a
distributed round (DDP or FSDP2) save the same adapters as one device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfplay.adapters import adapter_base, adapter_rank, is_adapter
from selfplay.config import ConfigError, TinyModelConfig, parse_config
from selfplay.generation import HFBackend, SamplingParams
from selfplay.generation.base import checkpoint_stop_ids
from selfplay.precision import checkpoint_dtype, load_dtype, save_dtype
from selfplay.tasks.base import Prompt
from selfplay.tiny_model import build_model, build_tokenizer
from selfplay.training.config import TrainingConfig
from selfplay.training.distributed import Job, train_distributed
from selfplay.training.trainer import PairExample, load_trainable, save_trained, train_on_pairs

PAD = 0
LORA = {"r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]}
TRAINING = {"lr": 1e-2, "batch_size": 4, "max_steps": 3, "epochs": 2}
INPUT = torch.tensor([[1, 40, 41, 42, 43]])
EOS_IDS = [2, 3]  # the tiny tokenizer's <eos> and <unk>


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose generation config stops at two EOS ids (an instruct model's)."""
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(
        TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128), tok
    )
    model.generation_config.eos_token_id = EOS_IDS
    path = tmp_path_factory.mktemp("base")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def pairs() -> list[PairExample]:
    gen = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(4, 90, (n,), generator=gen).tolist()

    return [PairExample(ids(4), ids(3) + [2], ids(2) + [2]) for _ in range(8)]


def train_round(policy: Path, target: Path, **lora: object) -> torch.nn.Module:
    """One LoRA round as the train stage runs it on one device: train, save in float32."""
    cfg = TrainingConfig(**TRAINING, lora={**LORA, **lora})
    model = load_trainable(str(policy), cfg, "cpu")
    train_on_pairs(model, pairs(), cfg, PAD, seed=0)
    save_trained(model, cfg, AutoTokenizer.from_pretrained(policy), target, torch.float32)
    return model


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(INPUT).logits


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def stops(checkpoint: Path) -> set[int]:
    """The ids the vllm, sglang and openai backends stop at for `checkpoint`."""
    return checkpoint_stop_ids(AutoTokenizer.from_pretrained(checkpoint), str(checkpoint))


def test_a_lora_round_saves_its_adapters_which_load_onto_their_base(base, tmp_path: Path):
    trained = train_round(base, tmp_path / "round-0")
    saved = tmp_path / "round-0"
    assert is_adapter(saved) and not (saved / "model.safetensors").exists()
    assert adapter_base(saved) == str(base) and adapter_rank(saved) == 4
    assert size(saved) < size(base) / 4
    assert stops(saved) == set(EOS_IDS)  # the base's generation config, saved beside them
    expected = logits(trained)
    loaded = AutoModelForCausalLM.from_pretrained(saved)  # transformers applies the adapters
    torch.testing.assert_close(logits(loaded), expected)
    assert not torch.allclose(logits(AutoModelForCausalLM.from_pretrained(base)), expected)

    backend = HFBackend()
    backend.load(str(saved))
    torch.testing.assert_close(logits(backend.model), expected)
    samples = backend.generate([Prompt("Q:1+2=")], SamplingParams(n=2, max_new_tokens=4, seed=0))
    assert len(samples[0]) == 2


def test_the_next_round_trains_the_adapters_on_or_merges_them(base, tmp_path: Path):
    first = train_round(base, tmp_path / "round-0")
    adapters = {n: p for n, p in first.named_parameters() if p.requires_grad}
    on = load_trainable(str(tmp_path / "round-0"), TrainingConfig(lora=LORA), "cpu")
    trainable = dict((n, p) for n, p in on.named_parameters() if p.requires_grad)
    assert trainable.keys() == adapters.keys()
    for name, value in adapters.items():
        torch.testing.assert_close(trainable[name], value)
    train_round(tmp_path / "round-0", tmp_path / "round-1")
    assert adapter_base(tmp_path / "round-1") == str(base)  # still the adapters of the base

    full = load_trainable(str(tmp_path / "round-0"), TrainingConfig(), "cpu")
    assert not any("lora" in n for n, _ in full.named_parameters())
    torch.testing.assert_close(logits(full), logits(first), rtol=1e-4, atol=1e-5)


def test_an_adapters_dtype_is_its_bases(base, tmp_path: Path):
    # model.dtype auto loads an adapter's base in the base's dtype on a GPU, not in float32
    # (an adapter checkpoint has no config.json), and a round from it saves in that dtype.
    bf16 = tmp_path / "bf16-base"
    AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).save_pretrained(bf16)
    AutoTokenizer.from_pretrained(base).save_pretrained(bf16)
    train_round(bf16, tmp_path / "round-0")
    assert is_adapter(tmp_path / "round-0")
    assert checkpoint_dtype(tmp_path / "round-0") == "bfloat16"
    assert load_dtype("auto", tmp_path / "round-0", "cuda") == "bfloat16"
    assert save_dtype("auto", tmp_path / "round-0") == torch.bfloat16


def test_merge_saves_a_full_model(base, tmp_path: Path):
    trained = train_round(base, tmp_path / "merged", merge=True)
    assert not is_adapter(tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(loaded), logits(trained), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_save_the_adapters_one_device_saves(strategy, base, tmp_path: Path):
    train_round(base, tmp_path / "round-0")  # the policy is an adapter: trained on by the ranks
    one = train_round(tmp_path / "round-0", tmp_path / "single")
    cfg = TrainingConfig(**TRAINING, lora=LORA, distributed={"strategy": strategy, "nproc": 2})
    job = Job(str(tmp_path / "round-0"), pairs(), cfg, PAD, 0, str(tmp_path / "ranks"), "float32")
    train_distributed(job, tmp_path / "job")
    assert is_adapter(tmp_path / "ranks") and adapter_base(tmp_path / "ranks") == str(base)
    assert stops(tmp_path / "ranks") == set(EOS_IDS)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ranks")
    torch.testing.assert_close(logits(loaded), logits(one), rtol=1e-4, atol=1e-4)
    start = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "round-0"))
    assert not torch.allclose(start, logits(one), rtol=1e-3, atol=1e-3)  # the ranks trained


@pytest.mark.parametrize("backend", ["sglang", "openai"])
def test_backends_that_serve_no_adapters_need_merged_lora_rounds(backend):
    lora = {"generation": {"backend": backend}, "training": {"lora": LORA}}
    with pytest.raises(ConfigError, match=f"training.lora.merge must be true with .* {backend}"):
        parse_config(lora)
    lora["training"]["lora"] = {**LORA, "merge": True}
    assert parse_config(lora).training.lora.merge
