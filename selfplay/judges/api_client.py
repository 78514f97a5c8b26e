"""The `api` judge's HTTP side: chat completions from one OpenAI-compatible endpoint.

Requests run on a private event-loop thread, at most `max_concurrency` in flight, through the
`openai` client with its own retries off: failures are retried under selfplay's one policy
(`selfplay.http_retry`, bounded by `max_retries`, `backoff_base_s` and `backoff_max_s`), the
semaphore released while backing off. Every request ends as an `Answer`, the reason of a
failure included; nothing raises. The key is scrubbed from every text kept (answers, errors).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from selfplay.config import ApiJudgeConfig
from selfplay.http_retry import Failure, RetryPolicy, with_retries

try:
    import aiohttp  # noqa: F401  (the openai client's aiohttp transport: DefaultAioHttpClient)
    from openai import (
        APIConnectionError,
        APIStatusError,
        APITimeoutError,
        AsyncOpenAI,
        DefaultAioHttpClient,
        Omit,
    )
except ImportError as err:  # resolve_factory reports this at config load
    raise ImportError(
        f"the api judge needs the openai package: pip install 'selfplay[openai]' ({err})"
    ) from err

T = TypeVar("T")

TELEMETRY_HEADERS = (
    "X-Stainless-Lang",
    "X-Stainless-Package-Version",
    "X-Stainless-OS",
    "X-Stainless-Arch",
    "X-Stainless-Runtime",
    "X-Stainless-Runtime-Version",
    "X-Stainless-Async",
)
NO_TELEMETRY: dict[str, Any] = {
    "headers": {h: Omit() for h in ("X-Stainless-Retry-Count", "X-Stainless-Read-Timeout")}
}
"""The openai client's telemetry headers, left off (TELEMETRY_HEADERS on the client, these two
per request): no endpoint needs them, and every header costs CPU in the client's per-request
header handling."""


@dataclass(frozen=True)
class Answer:
    """One request's outcome: the answer text, or None and the reason it failed."""

    text: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cached: bool = False
    attempts: int = 0
    latency_s: float = 0.0

    def reused(self) -> Answer:
        """The same answer served again: free, and marked cached."""
        if self.text is None:
            return self
        return replace(
            self,
            prompt_tokens=0,
            completion_tokens=0,
            cost=0.0,
            cached=True,
            attempts=0,
            latency_s=0.0,
        )

    def trace(self, model: str) -> dict[str, Any]:
        """The answer's part of a verdict's trace."""
        return {
            "model": model,
            "cached": self.cached,
            "attempts": self.attempts,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


class _LoopThread:
    """An event loop on a daemon thread. The sync `judge` waits on coroutines run there, so it
    works whether or not the calling thread already runs an event loop."""

    def __init__(self) -> None:
        try:
            import uvloop  # the `openai` extra installs it: about a tenth less CPU per request
        except ImportError:
            self.loop = asyncio.new_event_loop()
        else:
            self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="api-judge", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class ChatClient:
    """Asks the endpoint of `cfg` (model `model`, key `key`); see the module docstring. The
    loop thread and the HTTP client start on first use, and again after a fork."""

    def __init__(self, cfg: ApiJudgeConfig, model: str, key: str, rng: random.Random) -> None:
        self.cfg, self.model, self._key, self._rng = cfg, model, key, rng
        self._policy = RetryPolicy(cfg.max_retries, cfg.backoff_base_s, cfg.backoff_max_s)
        self._runner: _LoopThread | None = None
        self._client: AsyncOpenAI | None = None
        self._pid = 0

    def ask(self, batch: list[list[dict[str, str]]]) -> list[Answer]:
        """One answer per list of chat messages, in order, all asked concurrently."""
        return self._loop().run(self._gather(batch))

    def close(self) -> None:
        """Close the HTTP client and stop the event-loop thread (a later call starts anew)."""
        if self._runner is not None and self._client is not None and self._pid == os.getpid():
            self._runner.run(self._client.close())
            self._runner.stop()
        self._runner = self._client = None

    def scrub(self, text: str) -> str:
        """The text with the API key replaced (an error or an answer may echo it)."""
        return text.replace(self._key, "[redacted]")

    def _loop(self) -> _LoopThread:
        if self._runner is None or self._pid != os.getpid():
            self._runner, self._pid = _LoopThread(), os.getpid()
            self._client = self._runner.run(self._new_client())
        return self._runner

    async def _new_client(self) -> AsyncOpenAI:
        """The client, made on the loop that will use it. Its aiohttp transport costs about
        half the CPU per request of the default httpx one, and without the client's nine
        X-Stainless-* telemetry headers each request's header handling is about half as long
        (benchmarks/api_judge.py)."""
        return AsyncOpenAI(
            api_key=self._key,
            base_url=self.cfg.base_url,
            max_retries=0,  # the retry bound is ours (max_retries, backoff_max_s)
            timeout=self.cfg.timeout_s,
            http_client=DefaultAioHttpClient(),
            default_headers={h: Omit() for h in TELEMETRY_HEADERS},
        )

    async def _gather(self, batch: list[list[dict[str, str]]]) -> list[Answer]:
        limit = asyncio.Semaphore(self.cfg.max_concurrency)
        return list(await asyncio.gather(*(self._send(m, limit) for m in batch)))

    async def _send(self, messages: list[dict[str, str]], limit: asyncio.Semaphore) -> Answer:
        """One request with retries; never raises."""
        client, start = self._client, time.perf_counter()
        assert client is not None

        async def attempt() -> dict[str, Any] | Failure:
            async with limit:  # released while backing off
                try:
                    # POST /chat/completions through the client's own `post` (auth, base URL,
                    # timeout, error types) with a plain-JSON result: the typed `create` spends
                    # ~2 ms of CPU per call on request transforms and response models, which
                    # caps a concurrency-64 judge far below its latency bound.
                    return await client.post(
                        "/chat/completions",
                        cast_to=dict,
                        body={
                            "model": self.model,
                            "messages": messages,
                            "temperature": self.cfg.temperature,
                            "max_tokens": self.cfg.max_tokens,
                        },
                        options=NO_TELEMETRY,
                    )
                except Exception as err:  # every failure becomes an Answer; none escapes
                    return self._failure(err)

        outcome = await with_retries(attempt, self._policy, self._rng, what="api judge")
        latency_s = time.perf_counter() - start
        if outcome.failure is None:
            return self._answer(outcome.value, outcome.attempts, latency_s)
        how = (
            f"gave up after {outcome.attempts} attempts"
            if outcome.failure.retryable
            else "not retryable"
        )
        error = f"{outcome.failure.reason} ({how})"
        return Answer(None, error=error, attempts=outcome.attempts, latency_s=latency_s)

    def _answer(self, completion: Any, attempts: int, latency_s: float) -> Answer:
        """The text and usage of a chat-completion JSON body (malformed: a failed answer)."""
        try:
            usage = completion.get("usage") or {}
            p_tok = int(usage.get("prompt_tokens") or 0)
            c_tok = int(usage.get("completion_tokens") or 0)
            choices = completion.get("choices") or []
            text = choices[0]["message"]["content"] if choices else None
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            shown = self.scrub(repr(completion))[:200]
            return Answer(None, error=f"malformed answer: {shown}", attempts=attempts)
        cost = (p_tok * self.cfg.input_cost_per_mtok + c_tok * self.cfg.output_cost_per_mtok) / 1e6
        kw = dict(
            prompt_tokens=p_tok,
            completion_tokens=c_tok,
            cost=cost,
            attempts=attempts,
            latency_s=latency_s,
        )
        if not choices:
            return Answer(None, error="the answer has no choices", **kw)
        return Answer(self.scrub(text or ""), **kw)

    def _failure(self, err: Exception) -> Failure:
        """A failed request as the retry policy sees it, its reason without secrets."""
        root = err
        while root.__cause__ is not None:
            root = root.__cause__
        # The aiohttp transport reports a refused connection as a connect timeout: ask the root.
        if isinstance(err, APITimeoutError) and isinstance(root, TimeoutError | APITimeoutError):
            return Failure.transport(f"timeout after {self.cfg.timeout_s}s")
        if isinstance(err, APIConnectionError):
            reason = f"connection error: {type(root).__name__}: {root}"
            return Failure.transport(self.scrub(reason)[:300])
        if isinstance(err, APIStatusError):
            reason = self.scrub(f"HTTP {err.status_code}: {err.message}")[:300]
            return Failure.status(err.status_code, reason, err.response.headers)
        return Failure(self.scrub(f"{type(err).__name__}: {err}")[:300], retryable=False)
