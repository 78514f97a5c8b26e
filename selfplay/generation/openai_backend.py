"""The `openai` backend: any OpenAI-compatible server (vllm serve, SGLang's server, hosted APIs).

One request per prompt asks for its K samples with `n` and the sampled tokens' log-probs
(`logprobs: 0`); requests run concurrently under `max_concurrency`, and 408, 409, 429, 5xx,
timeouts and lost connections are retried up to `max_retries` times under selfplay's one
policy (selfplay/http_retry.py: full-jitter backoff from 0.5 s, or the server's Retry-After;
each wait at most 30 s). Token ids come from the server when it returns them (vLLM's
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
    import_engine,
    resolve_dir,
)
from selfplay.http_retry import Failure, RetryPolicy, with_retries
from selfplay.precision import load_dtype

logger = logging.getLogger(__name__)

SERVER_START_TIMEOUT_S = 600.0


class ServerError(RuntimeError):
    """A request that failed for good (a non-retryable status, or retries exhausted)."""


class OpenAIBackend:
    """Generates through an OpenAI-compatible HTTP API."""

    def __init__(self, cfg: OpenAIConfig | None = None, dtype: ModelDtype = "auto") -> None:
        self.cfg = cfg or OpenAIConfig()
        self.dtype = dtype  # model.dtype: {dtype} of the managed server's command
        self.checkpoint_dir: str | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
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

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        """Return, per prompt, `params.n` samples; prompt i is seeded `seed + i·n`."""
        if self.checkpoint_dir is None or self.base_url is None:
            raise RuntimeError("OpenAIBackend.generate called before load()")
        check_greedy(params)
        if not prompts:
            return []
        return asyncio.run(self._generate_all(prompts, params))

    async def _generate_all(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        httpx = import_engine("httpx", "openai")
        limit = asyncio.Semaphore(self.cfg.max_concurrency)
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers(), timeout=self.cfg.timeout_s
        ) as client:

            async def one(i: int, prompt: str) -> list[Sample]:
                async with limit:
                    body = self._request_body(prompt, params, params.seed + i * params.n)
                    data = await self._post(client, body)
                    return self._samples(data, params.n)

            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    def _request_body(self, prompt: str, params: SamplingParams, seed: int) -> dict[str, Any]:
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
        if self.cfg.endpoint == "chat":
            body |= {"messages": [{"role": "user", "content": prompt}], "logprobs": True}
        else:
            body |= {"prompt": prompt, "logprobs": 0}
        return body

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
