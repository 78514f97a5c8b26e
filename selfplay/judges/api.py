"""The `api` judge: any OpenAI-compatible chat endpoint as LLM-as-a-judge (the `openai` extra).

mode pointwise: the rubric (DEFAULT_RUBRIC, or `api.rubric`) asks for a final line
"Score: N/M". The verdict's score is N/M in [0, 1], M being the answer's own denominator or
else `api.scale` (default 10, so "Score: 7/10" and "Score: 7" both give 0.7). An answer with
no score, or one outside [0, M], is a failed verdict whose trace keeps the raw answer.

mode pairwise: `compare` asks which of two responses is better: "Winner: A" → 1, "Winner: B"
→ 0, "Winner: tie" → ½, or a probability "P(A) = p" → p. In the loop (`judge`) each response
scores its mean order-averaged win probability P_sym against its siblings (both orders are
asked, `symmetric_compare`); the trace lists p_ab, p_ba and position_flip per sibling.

Requests run on a private event-loop thread, at most `max_concurrency` in flight. 408, 409,
429, 5xx, timeouts and connection errors are retried up to `max_retries` times after a
full-jitter exponential backoff or the server's Retry-After, each wait capped at
`backoff_max_s`; then the judgment fails with the last status. An identical request (model,
messages, parameters) is sent once: within a batch, and across runs through the store's
`judge_cache` table; a reused answer costs nothing and its trace says `cached: true`.
The key is read from the environment variable `api_key_env` only, and scrubbed from every
text the judge keeps (answers, errors).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sqlalchemy import select

from db.engine import transaction
from db.models import JudgeCacheEntry
from db.queries import insert_ignore
from selfplay.config import ConfigError, JudgeConfig
from selfplay.judges.base import (
    Comparison,
    JudgeEnv,
    JudgeItem,
    PairItem,
    Verdict,
    symmetric_compare,
)

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

log = logging.getLogger(__name__)
T = TypeVar("T")

SYSTEM_PROMPT = "You are a strict, fair judge of responses to user requests."

DEFAULT_RUBRIC = """\
Rate the response to the request below on a scale of 0 to {scale}: correctness first, then \
completeness and clarity; length is no merit. Reason briefly, then end with the line \
"Score: N/{scale}".

[Request]
{prompt}
[End of request]

[Response]
{response}
[End of response]"""

PAIRWISE_PROMPT = """\
Two responses to the same request follow. Which is better: correctness first, then \
completeness and clarity? Their order and their length are no merit. Reason briefly, then end \
with the line "Winner: A", "Winner: B" or "Winner: tie".

[Request]
{prompt}
[End of request]

[Response A]
{first}
[End of response A]

[Response B]
{second}
[End of response B]"""

NUMBER = r"(-?\d+(?:\.\d+)?)"
SCORE = re.compile(
    rf"\b(?:score|rating)\b\W{{0,4}}?(?:is\W{{0,3}}?)?{NUMBER}(?:\s*(?:/|out\s+of)\s*{NUMBER})?",
    re.I,
)
BARE_SCORE = re.compile(rf"^\W*{NUMBER}(?:\s*/\s*{NUMBER})?\W*$")
WINNER = re.compile(r"\bwinner\b\W{0,4}(?:is\s+)?(?:response\s+)?(a|b|tie)\b", re.I)
PROB_A = re.compile(r"\bP\s*\(\s*A\s*\)\s*(?:=|:|is)\s*(\d*\.?\d+)", re.I)
BARE_CHOICE = {"a": 1.0, "b": 0.0, "tie": 0.5, "response a": 1.0, "response b": 0.0}
RETRY_STATUSES = frozenset({408, 409, 429})


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


def parse_score(text: str, scale: int) -> float | None:
    """The last "Score: N[/M]" (or a bare "N[/M]" answer) as N/M in [0, 1]; M defaults to
    `scale`. None when there is none or N is outside [0, M]."""
    matches = SCORE.findall(text) or BARE_SCORE.findall(text.strip())
    if not matches:
        return None
    value, top = matches[-1]
    n, m = float(value), float(top) if top else float(scale)
    return n / m if m > 0 and 0 <= n <= m else None


def parse_preference(text: str) -> float | None:
    """P(A, the first-shown response, wins): the last "Winner: A|B|tie" (1, 0, ½), else
    "P(A) = p" with p in [0, 1], else a bare answer "A", "B" or "tie". None otherwise."""
    if winners := WINNER.findall(text):
        return BARE_CHOICE[winners[-1].lower()]
    if probs := PROB_A.findall(text):
        p = float(probs[-1])
        return p if 0.0 <= p <= 1.0 else None
    return BARE_CHOICE.get(text.strip().strip(".*\"'` ").lower())


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks to wait: `retry-after-ms`, or `retry-after` as delta-seconds or
    an HTTP-date (RFC 9110 §10.2.3); None when absent or unreadable. Header names lower-case
    (httpx headers match any case)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_s, base_s · 2^attempt)] seconds (attempt from 0)."""
    return rng.uniform(0.0, min(max_s, base_s * 2.0**attempt))


def request_key(model: str, messages: list[dict[str, str]], params: Mapping[str, Any]) -> str:
    """The cache key of a request: sha256 hex of (model, messages, parameters); no credentials."""
    blob = json.dumps(
        {"model": model, "messages": messages, "params": dict(params)},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


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


class _AtRepeat:
    """`compare` for one repeat index (part of the cache key when temperature > 0)."""

    def __init__(self, judge: ApiJudge, repeat: int) -> None:
        self.judge, self.repeat, self.name = judge, repeat, judge.name

    def compare(self, items: list[PairItem]) -> list[Comparison]:
        return self.judge._compare(items, self.repeat)


class ApiJudge:
    """An OpenAI-compatible chat model as judge; see the module docstring for the contract."""

    name = "api"

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        self.cfg = cfg.api
        if not self.cfg.model:
            raise ConfigError("judge.api.model is required for the api judge")
        key = os.environ.get(self.cfg.api_key_env)
        if not key:
            raise ConfigError(
                f"judge.api.api_key_env: the environment variable {self.cfg.api_key_env} is not "
                "set (the api judge reads its key only from there; any non-empty value does for "
                "a server without authentication)"
            )
        self._key = key
        self.model: str = self.cfg.model
        self.needs_siblings = self.cfg.mode == "pairwise"
        self._sessions = env.sessions if self.cfg.cache else None
        self._rng = random.Random(env.seed)
        self._runner: _LoopThread | None = None
        self._client: AsyncOpenAI | None = None
        self._pid = 0

    # -- the protocol ---------------------------------------------------------------------

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """One verdict per item: the rubric score (pointwise) or the mean P_sym against the
        item's siblings (pairwise). Failures are verdicts; this does not raise on API errors."""
        if self.cfg.mode == "pairwise":
            return self._pairwise(items)
        requests = [
            self._request(
                DEFAULT_RUBRIC if self.cfg.rubric is None else self.cfg.rubric,
                dict(prompt=i.prompt.text, response=i.response, scale=self.cfg.scale),
                i.extra.get("repeat", 0),
            )
            for i in items
        ]
        return [self._verdict(a) for a in self._ask_all(requests)]

    def compare(self, items: list[PairItem]) -> list[Comparison]:
        """P(first beats second) for each pair, in the order shown (one request each)."""
        return self._compare(items, 0)

    def close(self) -> None:
        """Close the HTTP client and stop the event-loop thread (a later call starts anew)."""
        if self._runner is not None and self._client is not None and self._pid == os.getpid():
            self._runner.run(self._client.close())
            self._runner.stop()
        self._runner = self._client = None

    # -- verdicts -------------------------------------------------------------------------

    def _verdict(self, a: Answer) -> Verdict:
        trace = a.trace(self.model)
        kw = dict(latency_s=a.latency_s, tokens=a.prompt_tokens + a.completion_tokens, cost=a.cost)
        if a.text is None:
            return Verdict.failure(a.error or "request failed", trace=trace, **kw)
        score = parse_score(a.text, self.cfg.scale)
        if score is None:
            return Verdict.failure(
                f"unparseable answer: no 'Score: N/M' with 0 <= N <= M (scale {self.cfg.scale})",
                trace={**trace, "raw": a.text},
                **kw,
            )
        return Verdict(status="ok", score=score, critique=a.text, trace=trace, **kw)

    def _compare(self, items: list[PairItem], repeat: int) -> list[Comparison]:
        requests = [
            self._request(
                PAIRWISE_PROMPT,
                dict(prompt=i.prompt.text, first=i.first, second=i.second),
                repeat,
            )
            for i in items
        ]
        out = []
        for a in self._ask_all(requests):
            trace = a.trace(self.model)
            kw = dict(
                latency_s=a.latency_s, tokens=a.prompt_tokens + a.completion_tokens, cost=a.cost
            )
            prob = None if a.text is None else parse_preference(a.text)
            if a.text is None:
                out.append(Comparison.failure(a.error or "request failed", trace=trace, **kw))
            elif prob is None:
                reason = "unparseable answer: no 'Winner: A|B|tie' or 'P(A) = p' with p in [0, 1]"
                out.append(Comparison.failure(reason, trace={**trace, "raw": a.text}, **kw))
            else:
                out.append(Comparison(status="ok", prob=prob, critique=a.text, trace=trace, **kw))
        return out

    def _pairwise(self, items: list[JudgeItem]) -> list[Verdict]:
        """Each item against each sibling, both orders; score = mean P_sym."""
        per_item: list[list[Comparison]] = [[] for _ in items]
        for repeat in sorted({i.extra.get("repeat", 0) for i in items}):
            owners, pairs = [], []
            for k, item in enumerate(items):
                if item.extra.get("repeat", 0) != repeat:
                    continue
                for sibling in item.extra.get("siblings", []):
                    owners.append(k)
                    pairs.append(PairItem(item.prompt, item.response, sibling))
            for k, c in zip(owners, symmetric_compare(_AtRepeat(self, repeat), pairs), strict=True):
                per_item[k].append(c)
        return [self._pairwise_verdict(cs) for cs in per_item]

    def _pairwise_verdict(self, comparisons: list[Comparison]) -> Verdict:
        if not comparisons:
            return Verdict.failure(
                "no siblings to compare against: mode pairwise needs "
                "generation.samples_per_prompt >= 2"
            )
        tokens = sum(c.tokens or 0 for c in comparisons)
        trace = {
            "model": self.model,
            "cached": tokens == 0 and all(c.status == "ok" for c in comparisons),
            "comparisons": [
                {"error": c.error} if c.status != "ok" else dict(c.trace or {}) for c in comparisons
            ],
            "position_flips": sum(bool((c.trace or {}).get("position_flip")) for c in comparisons),
        }
        kw = dict(
            latency_s=sum(c.latency_s or 0.0 for c in comparisons),
            tokens=tokens,
            cost=sum(c.cost or 0.0 for c in comparisons),
        )
        failed = [c for c in comparisons if c.status != "ok" or c.prob is None]
        if failed:
            reason = f"{len(failed)} of {len(comparisons)} comparisons failed: {failed[0].error}"
            return Verdict.failure(reason, trace=trace, **kw)
        score = sum(c.prob or 0.0 for c in comparisons) / len(comparisons)
        critique = f"mean order-averaged win probability against {len(comparisons)} siblings"
        return Verdict(status="ok", score=score, critique=critique, trace=trace, **kw)

    # -- requests -------------------------------------------------------------------------

    def _request(
        self, template: str, fields: dict[str, Any], repeat: int
    ) -> tuple[str, list[dict[str, str]]]:
        """(cache key, messages). The repeat index is part of the key only when sampling is
        random (temperature > 0), so repeats draw fresh answers then and share one otherwise."""
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": template.format(**fields)},
        ]
        params: dict[str, Any] = {
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        if self.cfg.temperature > 0:
            params["repeat"] = repeat
        return request_key(self.model, messages, params), messages

    def _ask_all(self, requests: list[tuple[str, list[dict[str, str]]]]) -> list[Answer]:
        """One answer per request, in order: each distinct request is looked up in the store's
        cache, else sent once; later copies of it are served as cached (free)."""
        unique: dict[str, list[dict[str, str]]] = {}
        for key, messages in requests:
            unique.setdefault(key, messages)
        answers = self._cache_get(list(unique)) if self._sessions is not None else {}
        todo = [(k, m) for k, m in unique.items() if k not in answers]
        if todo:
            fresh = self._loop().run(self._gather([m for _, m in todo]))
            answers.update(zip([k for k, _ in todo], fresh, strict=True))
            if self._sessions is not None:
                self._cache_put([(k, a) for (k, _), a in zip(todo, fresh, strict=True)])
        out, seen = [], set()
        for key, _ in requests:
            out.append(answers[key].reused() if key in seen else answers[key])
            seen.add(key)
        return out

    def _cache_get(self, keys: list[str]) -> dict[str, Answer]:
        assert self._sessions is not None
        found: dict[str, Answer] = {}
        with self._sessions() as s:
            for start in range(0, len(keys), 500):  # bounded IN lists
                rows = s.execute(
                    select(JudgeCacheEntry.key, JudgeCacheEntry.response).where(
                        JudgeCacheEntry.key.in_(keys[start : start + 500])
                    )
                )
                found.update((key, Answer(text, cached=True)) for key, text in rows)
        return found

    def _cache_put(self, answered: list[tuple[str, Answer]]) -> None:
        assert self._sessions is not None
        rows = [
            dict(
                key=key,
                model=self.model,
                response=a.text,
                prompt_tokens=a.prompt_tokens,
                completion_tokens=a.completion_tokens,
                cost=a.cost,
            )
            for key, a in answered
            if a.text is not None
        ]
        if rows:
            with transaction(self._sessions) as s:
                insert_ignore(s, JudgeCacheEntry, rows)

    def _loop(self) -> _LoopThread:
        """The event-loop thread and client, started on first use (and again after a fork)."""
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
        assert self._client is not None
        cfg, start, attempt = self.cfg, time.perf_counter(), 0
        while True:
            async with limit:  # released while backing off
                try:
                    # POST /chat/completions through the client's own `post` (auth, base URL,
                    # timeout, error types) with a plain-JSON result: the typed `create` spends
                    # ~2 ms of CPU per call on request transforms and response models, which
                    # caps a concurrency-64 judge far below its latency bound.
                    completion = await self._client.post(
                        "/chat/completions",
                        cast_to=dict,
                        body={
                            "model": self.model,
                            "messages": messages,
                            "temperature": cfg.temperature,
                            "max_tokens": cfg.max_tokens,
                        },
                        options=NO_TELEMETRY,
                    )
                except Exception as err:  # every failure becomes an Answer; none escapes
                    reason, retryable, headers = self._describe(err)
                else:
                    return self._answer(completion, attempt + 1, time.perf_counter() - start)
            attempt += 1
            if not retryable or attempt > cfg.max_retries:
                how = "not retryable" if not retryable else f"gave up after {attempt} attempts"
                return Answer(
                    None,
                    error=f"{reason} ({how})",
                    attempts=attempt,
                    latency_s=time.perf_counter() - start,
                )
            wait = retry_after_s(headers) if headers is not None else None
            if wait is None:
                wait = backoff_s(attempt - 1, cfg.backoff_base_s, cfg.backoff_max_s, self._rng)
            wait = min(wait, cfg.backoff_max_s)
            log.debug("api judge: %s; retry %d in %.2fs", reason, attempt, wait)
            await asyncio.sleep(wait)

    def _answer(self, completion: Any, attempts: int, latency_s: float) -> Answer:
        """The text and usage of a chat-completion JSON body (malformed: a failed answer)."""
        try:
            usage = completion.get("usage") or {}
            p_tok = int(usage.get("prompt_tokens") or 0)
            c_tok = int(usage.get("completion_tokens") or 0)
            choices = completion.get("choices") or []
            text = choices[0]["message"]["content"] if choices else None
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            shown = self._scrub(repr(completion))[:200]
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
        return Answer(self._scrub(text or ""), **kw)

    def _describe(self, err: Exception) -> tuple[str, bool, Mapping[str, str] | None]:
        """(reason without secrets, retryable?, response headers) of a failed request."""
        root = err
        while root.__cause__ is not None:
            root = root.__cause__
        # The aiohttp transport reports a refused connection as a connect timeout: ask the root.
        if isinstance(err, APITimeoutError) and isinstance(root, TimeoutError | APITimeoutError):
            return f"timeout after {self.cfg.timeout_s}s", True, None
        if isinstance(err, APIConnectionError):
            reason = f"connection error: {type(root).__name__}: {root}"
            return self._scrub(reason)[:300], True, None
        if isinstance(err, APIStatusError):
            code = err.status_code
            retryable = code in RETRY_STATUSES or code >= 500
            return self._scrub(f"HTTP {code}: {err.message}")[:300], retryable, err.response.headers
        return self._scrub(f"{type(err).__name__}: {err}")[:300], False, None

    def _scrub(self, text: str) -> str:
        """The text with the API key replaced (an error or an answer may echo it)."""
        return text.replace(self._key, "[redacted]")
