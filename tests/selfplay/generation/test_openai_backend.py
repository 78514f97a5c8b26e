"""The openai backend against a real vLLM OpenAI server (CPU) that the backend starts itself,
and its retry policy against a local HTTP server that fails on purpose."""

import email.utils
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfplay.config import OpenAIConfig
from selfplay.generation import HFBackend, SamplingParams
from selfplay.generation.openai_backend import OpenAIBackend, ServerError
from selfplay.tasks.base import Prompt

PROMPTS = [Prompt(t) for t in ("Q:1+2=", "Q:66+24=", "Q:5-3=", "Q:99+99=", "Q:7+0=")]
# {dtype} is filled in from model.dtype: auto, float32 on this CPU like the hf backend compared.
SERVER = [
    "{python}", "-m", "vllm.entrypoints.openai.api_server", "--model", "{checkpoint}",
    "--port", "{port}", "--dtype", "{dtype}", "--gpu-memory-utilization", "0.05",
    "--enforce-eager", "--seed", "0",
]  # fmt: skip
GREEDY = SamplingParams(n=1, temperature=0, max_new_tokens=8)


@pytest.fixture(scope="module")
def served(engine_checkpoint):
    backend = OpenAIBackend(OpenAIConfig(server_command=SERVER, max_concurrency=4))
    backend.load(str(engine_checkpoint))
    yield backend
    backend.close()


def _hf(checkpoint):
    hf = HFBackend()
    hf.load(str(checkpoint))
    return hf


@pytest.mark.heavy
def test_completions_greedy_identical_to_hf(served, engine_checkpoint):
    ours = served.generate(PROMPTS, GREEDY)
    theirs = _hf(engine_checkpoint).generate(PROMPTS, GREEDY)
    for (a,), (b,) in zip(ours, theirs, strict=True):
        assert (a.text, a.token_ids, a.finish_reason) == (b.text, b.token_ids, b.finish_reason)
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
    assert any(s.finish_reason == "stop" for (s,) in ours)


@pytest.mark.heavy
def test_k_samples_with_raw_logprobs_and_seeds(served, engine_checkpoint, forward_logprob):
    tok = AutoTokenizer.from_pretrained(engine_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(engine_checkpoint, dtype="float32")
    params = SamplingParams(n=4, temperature=0.8, max_new_tokens=8, seed=7)
    out = served.generate(PROMPTS, params)
    assert [len(o) for o in out] == [4] * len(PROMPTS)
    for prompt, samples in zip(PROMPTS, out, strict=True):
        for s in samples:
            assert s.text == tok.decode(s.token_ids, skip_special_tokens=True)
            assert s.logprob == pytest.approx(
                forward_logprob(model, tok, prompt.text, s.token_ids), abs=1e-3
            )
    assert served.generate(PROMPTS, params) == out  # seeded per prompt
    assert len({tuple(s.token_ids) for s in out[0]}) > 1


@pytest.mark.heavy
def test_chat_endpoint_on_an_external_server(served, engine_checkpoint, tmp_path):
    cfg = OpenAIConfig(url=served.base_url, endpoint="chat")
    chat = OpenAIBackend(cfg)
    chat.load(str(engine_checkpoint))
    assert chat.model == served.model  # learnt from GET /models
    # The checkpoint's chat template passes the message through: same tokens as completions.
    assert [s.token_ids for (s,) in chat.generate(PROMPTS, GREEDY)] == [
        s.token_ids for (s,) in served.generate(PROMPTS, GREEDY)
    ]
    # An external server cannot be pointed at a new checkpoint without a reload command...
    with pytest.raises(RuntimeError, match="reload_command"):
        chat.load(str(tmp_path))
    # ...which, when configured, is run with the checkpoint before generating from it.
    marker = tmp_path / "reloaded"
    hook = [sys.executable, "-c", f"open({str(marker)!r}, 'w').write(__import__('sys').argv[1])"]
    hooked = OpenAIBackend(cfg.model_copy(update={"reload_command": [*hook, "{checkpoint}"]}))
    hooked.load(str(engine_checkpoint))
    assert marker.read_text() == str(engine_checkpoint.resolve())


@pytest.mark.heavy
def test_a_new_checkpoint_restarts_the_managed_server(served, engine_checkpoint_2):
    first = served.server
    served.load(str(engine_checkpoint_2))
    assert served.server is not first and first.poll() is not None  # old server stopped
    ours = [s.token_ids for (s,) in served.generate(PROMPTS, GREEDY)]
    assert ours == [s.token_ids for (s,) in _hf(engine_checkpoint_2).generate(PROMPTS, GREEDY)]


# -- retries, against a local server that fails on purpose -------------------------------


class _Flaky(BaseHTTPRequestHandler):
    script: list[int] = []  # status codes to answer, in order; then 200
    seen: list[dict] = []
    retry_after = "0"  # the Retry-After of a 429

    def log_message(self, *args):
        pass

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", type(self).retry_after)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply(200, {"data": [{"id": "flaky-model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"auth": self.headers.get("Authorization"), **body})
        if type(self).script:
            status = type(self).script.pop(0)
            return self._reply(status, {"error": f"status {status}"})
        choices = [
            {
                "index": k,
                "text": "A:3",
                "finish_reason": "stop",
                "logprobs": {"token_logprobs": [-0.5, -0.25, -0.25, -1.0]},
            }
            for k in range(body["n"])
        ]
        self._reply(200, {"choices": choices})


@pytest.fixture
def flaky(engine_checkpoint):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Flaky.script, _Flaky.seen, _Flaky.retry_after = [], [], "0"
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield url
    server.shutdown()


def test_retries_on_429_and_5xx_then_succeeds_with_the_key_from_the_env(
    flaky, engine_checkpoint, monkeypatch
):
    monkeypatch.setenv("MY_KEY", "sk-test")
    backend = OpenAIBackend(OpenAIConfig(url=flaky, api_key_env="MY_KEY", max_retries=3))
    backend.load(str(engine_checkpoint))
    _Flaky.script = [429, 503, 500]
    (samples,) = backend.generate([Prompt("Q:1+2=")], SamplingParams(n=2, seed=3))
    assert len(_Flaky.seen) == 4 and all(s["auth"] == "Bearer sk-test" for s in _Flaky.seen)
    assert _Flaky.seen[-1]["model"] == "flaky-model" and _Flaky.seen[-1]["seed"] == 3
    # No token ids from this server: the checkpoint's tokenizer encodes the text, EOS appended.
    tok = AutoTokenizer.from_pretrained(engine_checkpoint)
    assert samples[0].token_ids == tok("A:3", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id
    ]
    assert samples[0].logprob == -2.0 and samples[0].finish_reason == "stop"
    assert "sk-test" not in repr(backend.cfg)  # the key lives in the environment only


def test_gives_up_after_max_retries_and_never_retries_a_400(flaky, engine_checkpoint):
    backend = OpenAIBackend(OpenAIConfig(url=flaky, max_retries=1))
    backend.load(str(engine_checkpoint))
    _Flaky.script = [503, 503]
    with pytest.raises(ServerError, match="gave up after 1 retries"):
        backend.generate([Prompt("Q:1+2=")], SamplingParams())
    _Flaky.seen, _Flaky.script = [], [400]
    with pytest.raises(ServerError, match="HTTP 400"):
        backend.generate([Prompt("Q:1+2=")], SamplingParams())
    assert len(_Flaky.seen) == 1


def test_a_retry_after_date_is_honoured(flaky, engine_checkpoint):
    backend = OpenAIBackend(OpenAIConfig(url=flaky, max_retries=1))
    backend.load(str(engine_checkpoint))
    # An HTTP-date two seconds ahead (whole seconds: a wait of 1-2 s); backoff alone would be
    # at most 0.5 s before the first retry.
    _Flaky.script = [429]
    _Flaky.retry_after = email.utils.formatdate(time.time() + 2, usegmt=True)
    start = time.monotonic()
    (samples,) = backend.generate([Prompt("Q:1+2=")], SamplingParams())
    assert len(_Flaky.seen) == 2 and samples[0].text == "A:3"
    assert time.monotonic() - start > 1.0


def test_generate_before_load_is_an_error():
    with pytest.raises(RuntimeError, match="load"):
        OpenAIBackend().generate(PROMPTS, SamplingParams())
