import pytest
import torch

from selfplay.config import GenerationConfig, SFTConfig, TinyModelConfig
from selfplay.generation import BACKENDS, HFBackend, SamplingParams, make_backend
from selfplay.sft import sft_train
from selfplay.tasks import ArithmeticTask
from selfplay.tasks.base import Prompt
from selfplay.tiny_model import build_model, build_tokenizer

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
PROMPTS = [Prompt(t) for t in ("Q:1+2=", "Q:66+24=", "Q:5-3=", "Q:99+99=")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model SFT-trained just enough to answer in format and stop with EOS."""
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(TINY, tok)
    prompts = ArithmeticTask(0, 500).train_prompts(0, 2000)
    examples = [(p, f"A:{p.answer}") for p in prompts]
    sft_train(model, tok, examples, SFTConfig(steps=80, batch_size=32, lr=1e-2), seed=0)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def backend(checkpoint):
    backend = HFBackend(prompts_per_batch=3)  # several chunks, uneven prompt lengths
    backend.load(str(checkpoint))
    return backend


def _recompute(backend, prompt, token_ids):
    """Sum log-prob of the response by one unpadded forward pass over prompt + response."""
    prompt_ids = backend.tokenizer(prompt.text)["input_ids"]
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = backend.model(ids).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    return float(logp.gather(1, torch.tensor(token_ids)[:, None]).sum())


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=0),
        SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=8, seed=1),
        SamplingParams(n=1, temperature=0, max_new_tokens=8),
        SamplingParams(n=2, temperature=1.5, max_new_tokens=3, seed=2),
    ],
)
def test_logprob_matches_a_forward_pass_over_prompt_and_response(backend, params):
    out = backend.generate(PROMPTS, params)
    assert len(out) == len(PROMPTS) and all(len(samples) == params.n for samples in out)
    for prompt, samples in zip(PROMPTS, out, strict=True):
        for s in samples:
            assert s.logprob <= 0
            assert s.logprob == pytest.approx(_recompute(backend, prompt, s.token_ids), abs=1e-4)


def test_finish_reasons_and_eos_handling(backend):
    eos = backend.tokenizer.eos_token_id
    out = backend.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=8))
    for (s,) in out:
        assert s.finish_reason == "stop"
        assert s.token_ids[-1] == eos and eos not in s.token_ids[:-1]
        assert s.text.startswith("A:") and "<eos>" not in s.text
        assert s.text == backend.tokenizer.decode(s.token_ids[:-1])
    out = backend.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=2))
    for (s,) in out:
        assert s.finish_reason == "length" and len(s.token_ids) == 2 and s.text == "A:"


def test_same_seed_same_samples_other_seed_other_samples(backend):
    params = SamplingParams(n=8, temperature=1.0, max_new_tokens=8, seed=11)
    rng_state = torch.get_rng_state()
    first = backend.generate(PROMPTS, params)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is left alone
    assert backend.generate(PROMPTS, params) == first
    other = backend.generate(PROMPTS, SamplingParams(n=8, temperature=1.0, seed=12))
    assert other != first


def test_greedy_is_argmax_and_independent_of_batching(backend):
    batched = backend.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=8))
    for prompt, (s,) in zip(PROMPTS, batched, strict=True):
        alone = backend.generate([prompt], SamplingParams(temperature=0, max_new_tokens=8))
        assert alone[0][0].token_ids == s.token_ids
        ids = backend.tokenizer(prompt.text)["input_ids"]
        for tok in s.token_ids:
            with torch.no_grad():
                logits = backend.model(torch.tensor([ids])).logits[0, -1]
            assert int(logits.argmax()) == tok
            ids.append(tok)
    # A vanishing nucleus keeps only the top token: sampling becomes greedy.
    nucleus = backend.generate(PROMPTS, SamplingParams(n=2, top_p=1e-6, seed=5))
    assert [[x.token_ids for x in o] for o in nucleus] == [[s.token_ids] * 2 for (s,) in batched]


def test_greedy_needs_n_1_and_generate_needs_load(backend):
    with pytest.raises(ValueError, match="greedy"):
        backend.generate(PROMPTS, SamplingParams(n=2, temperature=0))
    with pytest.raises(RuntimeError, match="load"):
        HFBackend().generate(PROMPTS, SamplingParams())
    assert backend.generate([], SamplingParams()) == []


def test_load_reuses_the_loaded_directory_and_switches_on_a_new_one(checkpoint, tmp_path):
    backend = HFBackend()
    backend.load(str(checkpoint))
    model = backend.model
    backend.load(str(checkpoint) + "/")
    assert backend.model is model
    tok = build_tokenizer()
    torch.manual_seed(1)
    build_model(TINY, tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    backend.load(str(tmp_path))
    assert backend.model is not model and not backend.model.training
    assert backend.model.dtype == torch.float32


def test_make_backend_uses_the_config():
    assert set(BACKENDS) == set(GenerationConfig.model_fields["backend"].annotation.__args__)
    backend = make_backend(GenerationConfig(prompts_per_batch=7))
    assert isinstance(backend, HFBackend) and backend.prompts_per_batch == 7
