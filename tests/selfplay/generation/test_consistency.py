"""Generation and training see the same context: for a sampled response, the summed log-prob
the backend reports equals (float32, within 1e-3) the log-prob the Scorer (reference and π_t
log-probs, the trainer's computation) gives it after the prompt as the store keeps it.

On the chat fixture (tests/chat_models.py: ChatML template, no-pad and BOS-adding variants),
with conversation prompts of different lengths (system turns, several turns)."""

import pytest

from selfplay.config import EngineConfig, OpenAIConfig
from selfplay.generation import HFBackend, SamplingParams
from selfplay.generation.base import GenerationBackend
from selfplay.scoring import Scorer
from selfplay.tasks.base import Prompt

PROMPTS = [
    Prompt("Give me three tips about mountain hiking."),
    Prompt.conversation([("system", "Be brief."), ("user", "What is 2 + 3?")]),
    Prompt.conversation(
        [
            ("user", "Hello!"),
            ("assistant", "Hi, how can I help?"),
            ("user", "What is the best way to begin with saving money?"),
        ]
    ),
]
PARAMS = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=5)
SERVER = [
    "{python}", "-m", "vllm.entrypoints.openai.api_server", "--model", "{checkpoint}",
    "--port", "{port}", "--dtype", "float32", "--gpu-memory-utilization", "0.05",
    "--enforce-eager", "--seed", "0",
]  # fmt: skip


def _stored(prompt: Prompt) -> Prompt:
    """The prompt as a `prompts` row gives it back."""
    return Prompt.from_row(prompt.text, prompt.answer, prompt.stored_messages())


def assert_consistent(backend: GenerationBackend, checkpoint) -> list:
    """Sample PROMPTS with `backend` (loaded on `checkpoint`) and check every sample's log-prob
    against the Scorer's; return the samples."""
    out = backend.generate(PROMPTS, PARAMS)
    prompts = [_stored(p) for p, samples in zip(PROMPTS, out, strict=True) for _ in samples]
    samples = [s for group in out for s in group]
    scored = Scorer(str(checkpoint), "float32").score(prompts, [s.token_ids for s in samples])
    assert [s.logprob for s in samples] == pytest.approx(scored, abs=1e-3)
    return samples


@pytest.mark.parametrize(
    "model", ["chat_model_dir", "chat_model_nopad_dir", "chat_model_bos_dir", "instruct_model_dir"]
)
def test_hf(model, request):
    checkpoint = request.getfixturevalue(model)
    backend = HFBackend(prompts_per_batch=2, dtype="float32")
    backend.load(str(checkpoint))
    samples = assert_consistent(backend, checkpoint)
    im_start = backend.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert all(im_start in ids for ids in backend.renderer.ids_batch(PROMPTS))  # chat, not text
    if model == "instruct_model_dir":  # it ends its turn: on <|im_end|>, a generation EOS
        stops = [s for s in samples if s.finish_reason == "stop"]
        assert stops and all(s.token_ids[-1] == backend.tokenizer.eos_token_id for s in stops)


@pytest.mark.heavy
def test_vllm(instruct_model_dir):
    from selfplay.generation.vllm import VLLMBackend

    backend = VLLMBackend(EngineConfig(gpu_memory_utilization=0.05, enforce_eager=True))
    backend.load(str(instruct_model_dir))
    try:
        assert_consistent(backend, instruct_model_dir)
    finally:
        backend.close()


@pytest.fixture(scope="module")
def served(instruct_model_dir):
    from selfplay.generation.openai_backend import OpenAIBackend

    backend = OpenAIBackend(OpenAIConfig(server_command=SERVER, max_concurrency=4))
    backend.load(str(instruct_model_dir))
    yield backend
    backend.close()


@pytest.mark.heavy
def test_openai_completions_sends_the_rendered_ids(served, instruct_model_dir):
    assert_consistent(served, instruct_model_dir)


@pytest.mark.heavy
def test_openai_chat_uses_the_servers_template_which_must_match(
    served, instruct_model_dir, tmp_path
):
    from selfplay.generation.openai_backend import OpenAIBackend, ServerError

    chat = OpenAIBackend(OpenAIConfig(url=served.base_url, endpoint="chat"))
    chat.load(str(instruct_model_dir))
    assert_consistent(chat, instruct_model_dir)
    # A template of ours that the server does not use: the request fails, saying so.
    other = tmp_path / "other.jinja"
    other.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    mismatched = OpenAIBackend(
        OpenAIConfig(url=served.base_url, endpoint="chat"), "auto", str(other)
    )
    mismatched.load(str(instruct_model_dir))
    with pytest.raises(ServerError, match="other tokens than model.chat_template"):
        mismatched.generate(PROMPTS[:1], PARAMS)
