"""model.dtype: what each engine loads a checkpoint in, and round checkpoints saved in the
policy's dtype (a bf16 input comes back bf16, the same size) while the trainer keeps float32,
in shards of at most checkpoints.MAX_SHARD_SIZE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfplay import checkpoints
from selfplay.checkpoints import save_checkpoint
from selfplay.config import GenerationConfig, TrainingConfig
from selfplay.generation import make_backend
from selfplay.precision import checkpoint_dtype, load_dtype, save_dtype
from selfplay.scoring import Scorer
from selfplay.training.trainer import load_trainable


@pytest.fixture(scope="module")
def bf16_dir(chat_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat model saved in bfloat16, as instruct checkpoints are released."""
    target = tmp_path_factory.mktemp("bf16-model")
    model = AutoModelForCausalLM.from_pretrained(chat_model_dir, dtype=torch.bfloat16)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(chat_model_dir).save_pretrained(target)
    return target


def _weights(path: Path) -> tuple[int, set[torch.dtype]]:
    file = path / "model.safetensors"
    with safe_open(file, "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
    return file.stat().st_size, dtypes


def test_auto_is_the_checkpoints_dtype_on_a_gpu_and_float32_on_a_cpu(bf16_dir: Path):
    assert checkpoint_dtype(bf16_dir) == "bfloat16"
    assert load_dtype("auto", bf16_dir, "cuda") == "bfloat16"
    assert load_dtype("auto", bf16_dir, "cpu") == "float32"
    assert load_dtype("float16", bf16_dir, "cpu") == "float16"
    assert save_dtype("auto", bf16_dir) == torch.bfloat16
    assert save_dtype("float32", bf16_dir) == torch.float32


def test_the_hf_backend_and_the_scorer_load_in_model_dtype(bf16_dir: Path):
    auto = make_backend(GenerationConfig(), "auto")
    auto.load(str(bf16_dir))
    # auto: the checkpoint's own dtype on a GPU, float32 on a CPU
    assert auto.model.dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    bf16 = make_backend(GenerationConfig(), "bfloat16")
    bf16.load(str(bf16_dir))
    assert bf16.model.dtype == torch.bfloat16
    assert Scorer(str(bf16_dir), "bfloat16").model.dtype == torch.bfloat16


def test_a_bf16_policy_trained_in_float32_is_saved_bf16_at_its_size(bf16_dir: Path, tmp_path):
    model = load_trainable(str(bf16_dir), TrainingConfig(), "cpu")
    assert model.dtype == torch.float32  # float32 masters while training
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)  # a trained change
    target = tmp_path / "round-0000"
    tokenizer = AutoTokenizer.from_pretrained(bf16_dir)
    save_checkpoint(model, tokenizer, target, dtype=save_dtype("auto", bf16_dir))
    assert _weights(target) == _weights(bf16_dir)  # bf16 only, the same bytes on disk
    assert model.dtype == torch.float32  # the caller's model is left as it was
    assert checkpoint_dtype(target) == "bfloat16"
    back = AutoModelForCausalLM.from_pretrained(target, dtype="auto")
    assert back.dtype == torch.bfloat16
    want = model.model.norm.weight.to(torch.bfloat16)
    assert torch.equal(back.model.norm.weight, want)
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()  # tied


def test_a_checkpoint_over_the_shard_size_is_saved_sharded_and_loads(
    bf16_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(checkpoints, "MAX_SHARD_SIZE", "100KB")  # the model is ~210 KB in bf16
    model = load_trainable(str(bf16_dir), TrainingConfig(), "cpu")
    target = tmp_path / "round-0000"
    save_checkpoint(model, AutoTokenizer.from_pretrained(bf16_dir), target, torch.bfloat16)
    shards = sorted(target.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (target / "model.safetensors").exists()
    assert all(f.stat().st_size < 100_000 + 2_000 for f in shards)  # the size, with a header
    assert (target / "model.safetensors.index.json").is_file()
    assert checkpoint_dtype(target) == "bfloat16"
    back = AutoModelForCausalLM.from_pretrained(target, dtype="auto")
    assert back.dtype == torch.bfloat16
    want = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    for name, value in back.state_dict().items():
        assert torch.equal(value, want[name]), name
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()  # tied
    assert Scorer(str(target), "auto").model.dtype == torch.float32  # auto on a CPU
