import json
import time

import pytest
import torch

import selfplay.sft as sft
from selfplay.config import ConfigError, ModelConfig, SFTConfig, TinyModelConfig
from selfplay.generation import HFBackend, SamplingParams
from selfplay.sft import IGNORE_INDEX, _collate, prepare_policy, sft_train
from selfplay.tasks import ArithmeticTask, JsonlTask
from selfplay.tasks.base import Prompt
from selfplay.tiny_model import build_model, build_tokenizer

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
SFT = SFTConfig(steps=30, batch_size=8, lr=1e-2, target_accuracy=None)


def _model(seed=0):
    tok = build_tokenizer()
    torch.manual_seed(seed)
    return build_model(TINY, tok), tok


def test_collate_masks_prompt_and_padding_out_of_the_labels():
    ids, mask, labels = _collate([([5, 6, 7], [8, 2]), ([5], [9, 9, 2])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 2], [5, 9, 9, 2, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    i = IGNORE_INDEX
    assert labels.tolist() == [[i, i, i, 8, 2], [i, 9, 9, 2, i]]


def test_sft_learns_a_completion_and_its_eos():
    model, tok = _model()
    examples = [(Prompt("Q:1+1="), "A:2"), (Prompt("Q:2+2="), "A:4")]
    result = sft_train(model, tok, examples, SFT.model_copy(update={"steps": 60}), seed=0)
    assert result.steps == 60 and result.loss < 0.1
    assert not model.training
    backend = HFBackend()
    backend.attach(model, tok)
    params = SamplingParams(temperature=0, max_new_tokens=6)
    out = backend.generate([p for p, _ in examples], params)
    assert [o[0].text for o in out] == ["A:2", "A:4"]
    assert all(o[0].finish_reason == "stop" for o in out)


def test_sft_is_deterministic_for_a_seed_and_reports_progress():
    examples = ArithmeticTask(0, 500).train_prompts(0, 64)
    pairs = [(p, f"A:{p.answer}") for p in examples]
    states, seen = [], []
    for _ in range(2):
        model, tok = _model()
        sft_train(model, tok, pairs, SFT, seed=3, progress=lambda *a: seen.append(a))
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert [s for s, _, _ in seen[:3]] == [1, 2, 3] and seen[-1][:2] == (30, 30)
    model, tok = _model()
    sft_train(model, tok, pairs, SFT, seed=4)
    assert not torch.equal(model.state_dict()["model.norm.weight"], states[0]["model.norm.weight"])


def test_sft_stop_callback_ends_training_early():
    model, tok = _model()
    examples = [(Prompt("Q:1+1="), "A:2")]
    result = sft_train(model, tok, examples, SFT, seed=0, stop=lambda step: step == 3)
    assert result.steps == 3


def _cfg(tmp_path, **sft_updates):
    return ModelConfig(tiny=TINY, sft=SFT.model_copy(update=sft_updates), cache_dir=tmp_path)


def test_prepare_policy_builds_a_loadable_checkpoint_then_reuses_it(tmp_path, monkeypatch):
    task = ArithmeticTask(0, 500)
    steps = []
    path = prepare_policy(_cfg(tmp_path), task, seed=0, progress=lambda s, n, loss: steps.append(s))
    assert steps == list(range(1, 31))
    assert path.parent == tmp_path and path.name.startswith("tiny-")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp dir left behind
    for name in ("config.json", "model.safetensors", "tokenizer.json", "selfplay_sft.json"):
        assert (path / name).is_file()
    assert json.loads((path / "selfplay_sft.json").read_text())["steps"] == 30
    backend = HFBackend()
    backend.load(str(path))
    (sample,) = backend.generate([Prompt("Q:1+2=")], SamplingParams(temperature=0))[0]
    assert sample.token_ids

    mtime = (path / "model.safetensors").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached policy should be reused")

    monkeypatch.setattr(sft, "sft_train", no_training)
    start = time.perf_counter()
    assert prepare_policy(_cfg(tmp_path), task, seed=0) == path
    assert time.perf_counter() - start < 5
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime


def test_prepare_policy_cache_key_covers_seed_config_and_task(tmp_path):
    task = ArithmeticTask(0, 500)
    base = prepare_policy(_cfg(tmp_path, steps=2), task, seed=0)
    assert prepare_policy(_cfg(tmp_path, steps=2), task, seed=1) != base
    assert prepare_policy(_cfg(tmp_path, steps=3), task, seed=0) != base
    assert prepare_policy(_cfg(tmp_path, steps=2), ArithmeticTask(5, 500), seed=0) != base


def test_prepare_policy_failure_leaves_no_partial_cache(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(sft, "sft_train", crash)
    with pytest.raises(RuntimeError):
        prepare_policy(_cfg(tmp_path), ArithmeticTask(0, 500), seed=0)
    assert list(tmp_path.iterdir()) == []


def test_prepare_policy_early_stops_at_the_target_accuracy(tmp_path, monkeypatch):
    monkeypatch.setattr(sft, "VALIDATE_EVERY", 5)
    monkeypatch.setattr(sft, "VALIDATION_SIZE", 16)
    # A task whose every prompt asks for the same answer is learnt within a few steps.
    data = tmp_path / "same.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Q{i}=", "answer": "A"}) + "\n" for i in range(9))
    )
    cfg = _cfg(tmp_path / "cache", steps=200, target_accuracy=0.9)
    path = prepare_policy(cfg, JsonlTask(data, seed=0), seed=0)
    info = json.loads((path / "selfplay_sft.json").read_text())
    assert info["steps"] < 200 and info["steps"] % 5 == 0
    assert info["validation_accuracy"] >= 0.9


def test_prepare_policy_returns_a_configured_path_untouched(tmp_path):
    (tmp_path / "my-model").mkdir()  # model.path must exist (selfplay.model_source)
    cfg = ModelConfig(path=str(tmp_path / "my-model"), cache_dir=tmp_path / "cache")
    assert prepare_policy(cfg, ArithmeticTask(0, 500), seed=0) == tmp_path / "my-model"
    assert not (tmp_path / "cache").exists()


def test_prepare_policy_needs_reference_answers(tmp_path):
    data = tmp_path / "open.jsonl"
    data.write_text('{"prompt": "Tell me a story."}\n')
    with pytest.raises(ConfigError, match="^model.sft.steps: .*reference answers"):
        prepare_policy(_cfg(tmp_path / "cache"), JsonlTask(data, seed=0), seed=0)
