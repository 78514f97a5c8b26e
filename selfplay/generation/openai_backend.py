"""The `openai` backend: any OpenAI-compatible server (vllm serve, SGLang's server, hosted APIs).

One request per prompt asks for its K samples with `n` and the sampled tokens' log-probs
(`logprobs: 0`); requests run concurrently under `max_concurrency`, and 408, 409, 429, 5xx,
timeouts and lost connections are retried up to `max_retries` times under selfplay's one
policy (selfplay/http_retry.py: full-jitter backoff from 0.5 s, or the server's Retry-After;
each wait at most 30 s).

What the policy sees: with `endpoint: completions` selfplay renders the prompt itself
(`selfplay.rendering`: the chat template, or the plain text) and sends its token ids as the
`prompt` (vLLM and SGLang accept a list of ints), so the server applies no template. With
`endpoint: chat` the server renders `prompt.chat()` with its own template; when it reports the
prompt's token ids (vLLM's `return_token_ids`) and the checkpoint is local, they must equal
the renderer's, else the request fails saying so: the tokens sampled after must be the tokens
trained after. A hosted model without a local tokenizer is sent the plain text (completions)
or the messages (chat). With a local checkpoint the request also names every stop id of its
generation_config (`stop_token_ids`, a vLLM extension other servers ignore).

Token ids come from the server when it returns them (vLLM's
`return_token_ids`); otherwise they are the checkpoint tokenizer's encoding of the text (plus
EOS when the server stopped on it).

Weights: with `url` unset, selfplay starts the server itself (`server_command`, a vLLM OpenAI
server by default) on each checkpoint it is asked to load, stopping the previous one: every
round generates from its own policy. With an external `url`, `reload_command` is run to point
that server at a new checkpoint; without one, the server can serve a single checkpoint only and
loading another is an error (selfplay cannot change an external server's weights itself).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from transformers import AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from selfplay.config import ModelDtype, OpenAIConfig
from selfplay.devices import default_device
from selfplay.generation.base import (
    Sample,
    SamplingParams,
    check_greedy,
    checkpoint_stop_ids,
    import_engine,
    resolve_dir,
)
from selfplay.http_retry import Failure, RetryPolicy, with_retries
from selfplay.precision import load_dtype
from selfplay.rendering import PromptRenderer
from selfplay.tasks.base import Prompt

logger = logging.getLogger(__name__)

SERVER_START_TIMEOUT_S = 600.0


class ServerError(RuntimeError):
    """A request that failed for good (a non-retryable status, or retries exhausted)."""


class OpenAIBackend:
    """Generates through an OpenAI-compatible HTTP API."""

    def __init__(
        self,
        cfg: OpenAIConfig | None = None,
        dtype: ModelDtype = "auto",
        chat_template: str = "auto",
    ) -> None:
        self.cfg = cfg or OpenAIConfig()
        self.dtype = dtype  # model.dtype: {dtype} of the managed server's command
        self.chat_template = chat_template  # model.chat_template (selfplay.rendering)
        self.checkpoint_dir: str | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.renderer: PromptRenderer | None = None  # None: no local tokenizer (hosted)
        self._stop_ids: list[int] | None = None
        self.base_url: str | None = self.cfg.url.rstrip("/") if self.cfg.url else None
        self.model: str | None = self.cfg.model
        self.server: subprocess.Popen | None = None
        self._server_log: Path | None = None
        self.last_load: tuple[str, float] | None = None  # ("start" | "reload" | "keep", seconds)
        self._retry = RetryPolicy(self.cfg.max_retries)
        self._rng = random.Random()

    # -- weights ---------------------------------------------------------------------------

    def load(self, checkpoint_dir: str) -> None:
        """Make the server generate from this checkpoint (see the module docstring)."""
        path = resolve_dir(checkpoint_dir)
        if path == self.checkpoint_dir:
            return
        start = time.perf_counter()
        if self.cfg.url is None:
            self.close()
            self._start_server(path)
            kind = "start"
        elif self.cfg.reload_command:
            cmd = [part.replace("{checkpoint}", path) for part in self.cfg.reload_command]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"generation.openai.reload_command exited {done.returncode}: "
                    f"{done.stderr.strip()[-2000:]}"
                )
            self._wait_ready(None)
            kind = "reload"
        elif self.checkpoint_dir is not None:
            raise RuntimeError(
                f"generation.openai.url ({self.cfg.url}) is an external server that selfplay "
                f"cannot point at the new checkpoint {path}: set generation.openai.reload_command "
                "(e.g. a script restarting the server on {checkpoint}) or leave url unset so "
                "selfplay starts and restarts the server itself"
            )
        else:
            self._wait_ready(None)  # the external server serves the one policy of this run
            kind = "keep"
        self.tokenizer = _local_tokenizer(path)
        if self.tokenizer is not None:
            self.renderer = PromptRenderer(self.tokenizer, self.chat_template, path)
            self._stop_ids = sorted(checkpoint_stop_ids(self.tokenizer, path))
        else:
            self.renderer, self._stop_ids = None, None
        self.checkpoint_dir = path
        self.last_load = (kind, time.perf_counter() - start)

    def _start_server(self, path: str) -> None:
        port = _free_port()
        cmd = [
            part.replace("{python}", sys.executable)
            .replace("{checkpoint}", path)
            .replace("{port}", str(port))
            .replace("{dtype}", load_dtype(self.dtype, path, default_device()))
            for part in self.cfg.server_command
        ]
        fd, log = tempfile.mkstemp(prefix="selfplay-server-", suffix=".log")
        self._server_log = Path(log)
        logger.info("starting %s (log %s)", " ".join(cmd), log)
        self.server = subprocess.Popen(
            cmd, stdout=fd, stderr=subprocess.STDOUT, start_new_session=True
        )
        os.close(fd)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.model = self.cfg.model
        self._wait_ready(self.server)

    def _wait_ready(self, proc: subprocess.Popen | None) -> None:
        """Poll GET /models until the server answers; learn the model name from it if unset."""
        httpx = import_engine("httpx", "openai")

        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        last: str = ""
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"generation server exited with status {proc.returncode} while starting; "
                    f"last lines of {self._server_log}:\n{self._log_tail()}"
                )
            try:
                r = httpx.get(f"{self.base_url}/models", headers=self._headers(), timeout=5.0)
                if r.status_code == 200:
                    if self.model is None:
                        self.model = r.json()["data"][0]["id"]
                    return
                last = f"HTTP {r.status_code}"
            except httpx.TransportError as err:
                last = repr(err)
            time.sleep(1.0)
        raise RuntimeError(
            f"generation server at {self.base_url} not ready after {SERVER_START_TIMEOUT_S:.0f}s "
            f"({last})"
        )

    def _log_tail(self) -> str:
        if self._server_log is None or not self._server_log.exists():
            return ""
        return "\n".join(self._server_log.read_text(errors="replace").splitlines()[-30:])

    def close(self) -> None:
        """Stop the server this backend started (its whole process group), if any."""
        if self.server is not None:
            if self.server.poll() is None:
                os.killpg(self.server.pid, signal.SIGTERM)
                try:
                    self.server.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.server.pid, signal.SIGKILL)
                    self.server.wait()
            self.server = None
            self.checkpoint_dir = None

    def __del__(self) -> None:
        self.close()

    # -- generation ------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.cfg.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Sample]]:
        """Return, per prompt, `params.n` samples; prompt i is seeded `seed + i·n`."""
        if self.checkpoint_dir is None or self.base_url is None:
            raise RuntimeError("OpenAIBackend.generate called before load()")
        check_greedy(params)
        if not prompts:
            return []
        return asyncio.run(self._generate_all(prompts, params))

    async def _generate_all(
        self, prompts: list[Prompt], params: SamplingParams
    ) -> list[list[Sample]]:
        httpx = import_engine("httpx", "openai")
        limit = asyncio.Semaphore(self.cfg.max_concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers(), timeout=self.cfg.timeout_s
        ) as client:

            async def one(i: int, prompt: Prompt) -> list[Sample]:
                async with limit:
                    body = self._request_body(prompt, params, params.seed + i * params.n)
                    data = await self._post(client, body)
                    self._check_prompt_tokens(prompt, data)
                    return self._samples(data, params.n)

            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    def _request_body(self, prompt: Prompt, params: SamplingParams, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "return_token_ids": True,  # vLLM; other servers ignore it
        }
        if params.temperature > 0:
            body["seed"] = seed
        if self._stop_ids is not None:
            body["stop_token_ids"] = self._stop_ids
        if self.cfg.endpoint == "chat":
            body |= {"messages": prompt.chat(), "logprobs": True}
        elif self.renderer is not None:
            body |= {"prompt": self.renderer.ids(prompt), "logprobs": 0}
        elif prompt.messages is None:
            body |= {"prompt": prompt.text, "logprobs": 0}
        else:
            raise ValueError(
                "generation.openai.endpoint: completions cannot send a conversation to a model "
                "without a local tokenizer to render it: use endpoint: chat"
            )
        return body

    def _check_prompt_tokens(self, prompt: Prompt, data: dict[str, Any]) -> None:
        """ServerError when the chat server reports prompt tokens other than the renderer's."""
        served = data.get("prompt_token_ids")
        if self.cfg.endpoint != "chat" or served is None or self.renderer is None:
            return
        ours = self.renderer.ids(prompt)
        if list(served) != ours:
            raise ServerError(
                f"{self.base_url}: the server's chat template renders a prompt to other tokens "
                f"than model.chat_template ({self.chat_template}) does ({len(served)} vs "
                f"{len(ours)} tokens; server: {self.renderer.tokenizer.decode(served)[:200]!r}, ours: "
                f"{self.renderer.text(prompt)[:200]!r}): use endpoint: completions (selfplay "
                "sends its own rendering) or start the server with the same template"
            )

    async def _post(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON answer to one request, retried (see the module docstring); a final
        failure is a ServerError."""
        httpx = import_engine("httpx", "openai")
        path = "/chat/completions" if self.cfg.endpoint == "chat" else "/completions"

        async def attempt() -> dict[str, Any] | Failure:
            try:
                r = await client.post(path, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as err:
                return Failure.transport(repr(err))
            if r.status_code == 200:
                return r.json()
            return Failure.status(r.status_code, f"HTTP {r.status_code}: {r.text[:500]}", r.headers)

        where = f"{self.base_url}{path}"
        outcome = await with_retries(
            attempt, self._retry, self._rng, what=where, log_level=logging.WARNING
        )
        if outcome.failure is None:
            assert outcome.value is not None
            return outcome.value
        if not outcome.failure.retryable:
            raise ServerError(f"{where}: {outcome.failure.reason}")
        raise ServerError(
            f"{where}: {outcome.failure.reason} (gave up after {self.cfg.max_retries} retries)"
        )

    def _samples(self, data: dict[str, Any], n: int) -> list[Sample]:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise ServerError(f"{self.base_url}: asked for n={n} samples, got {len(choices)}")
        return [self._sample(c) for c in choices]

    def _sample(self, choice: dict[str, Any]) -> Sample:
        if self.cfg.endpoint == "chat":
            text = choice["message"]["content"] or ""
            entries = (choice.get("logprobs") or {}).get("content") or []
            logprobs = [e["logprob"] for e in entries]
        else:
            text = choice["text"]
            logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
        reason = _finish_reason(choice.get("finish_reason"))
        token_ids = choice.get("token_ids")
        if token_ids is None and self.tokenizer is not None:
            token_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if reason == "stop" and self.tokenizer.eos_token_id is not None:
                token_ids.append(self.tokenizer.eos_token_id)
        return Sample(
            text=text,
            token_ids=list(token_ids or []),
            logprob=float(sum(lp for lp in logprobs if lp is not None)),
            finish_reason=reason,
        )


def _finish_reason(reason: str | None) -> Literal["stop", "length"]:
    if reason not in ("stop", "length"):
        raise ServerError(f"server finished a sample with reason {reason!r}")
    return reason


def _local_tokenizer(path: str) -> PreTrainedTokenizerBase | None:
    """The checkpoint's tokenizer when the directory is on this machine (hosted: none)."""
    if not (Path(path) / "tokenizer_config.json").exists():
        return None
    return AutoTokenizer.from_pretrained(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
