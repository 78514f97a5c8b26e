"""The `api` judge: any OpenAI-compatible chat endpoint as LLM-as-a-judge (the `openai` extra).

mode pointwise: the rubric (DEFAULT_RUBRIC, or `api.rubric`) asks for a final line
"Score: N/M". The verdict's score is N/M in [0, 1], M being the answer's own denominator or
else `api.scale` (default 10, so "Score: 7/10" and "Score: 7" both give 0.7). An answer with
no score, or one outside [0, M], is a failed verdict whose trace keeps the raw answer.

mode pairwise: `compare` asks which of two responses is better: "Winner: A" → 1, "Winner: B"
→ 0, "Winner: tie" → ½, or a probability "P(A) = p" → p. In the loop (`judge`) each response
scores its mean order-averaged win probability P_sym against its siblings (both orders are
asked, `symmetric_compare`); the trace lists p_ab, p_ba and position_flip per sibling.

Requests go through `ChatClient` (judges/api_client.py): concurrent, at most `max_concurrency`
in flight, retried under selfplay's one policy (selfplay/http_retry.py: 408, 409, 429, 5xx,
timeouts and connection errors, up to `max_retries` times after a full-jitter backoff or the
server's Retry-After, each wait capped at `backoff_max_s`); then the judgment fails with the
last status. An identical request (model, messages, parameters) is sent once: within a batch,
and across runs through the store's `judge_cache` table (db/judge_cache.py); a reused answer
costs nothing and its trace says `cached: true`. The key is read from the environment
variable `api_key_env` only, and scrubbed from every text the judge keeps (answers, errors).

A conversation prompt reaches the judge as a transcript in the rubric's `{prompt}`
(`request_text`): the judge model reads it as material to judge, not as turns of its own to
continue. A plain prompt, or a conversation of one user turn, is its text unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Mapping
from typing import Any

from db.engine import transaction
from db.judge_cache import CachedAnswer, cached_responses, store_answers
from selfplay.config import ConfigError, JudgeConfig
from selfplay.judges.api_client import Answer, ChatClient
from selfplay.judges.base import (
    BaseJudge,
    Comparison,
    JudgeEnv,
    JudgeItem,
    PairItem,
    Verdict,
    symmetric_compare,
)
from selfplay.tasks.base import Prompt

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


CONVERSATION_HEADER = "A conversation; the response answers its last user turn."


def request_text(prompt: Prompt) -> str:
    """What the rubric's `{prompt}` shows: the text of a plain prompt or of a lone user turn,
    else every turn under a `### Role:` heading, after CONVERSATION_HEADER."""
    turns = prompt.chat()
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    shown = [f"### {t['role'].capitalize()}:\n{t['content']}" for t in turns]
    return "\n\n".join([CONVERSATION_HEADER, *shown])


def request_key(model: str, messages: list[dict[str, str]], params: Mapping[str, Any]) -> str:
    """The cache key of a request: sha256 hex of (model, messages, parameters); no credentials."""
    blob = json.dumps(
        {"model": model, "messages": messages, "params": dict(params)},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class _AtRepeat:
    """`compare` for one repeat index (part of the cache key when temperature > 0)."""

    def __init__(self, judge: ApiJudge, repeat: int) -> None:
        self.judge, self.repeat, self.name = judge, repeat, judge.name

    def compare(self, items: list[PairItem]) -> list[Comparison]:
        return self.judge._compare(items, self.repeat)


class ApiJudge(BaseJudge):
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
        self.model: str = self.cfg.model
        self.needs_siblings = self.cfg.mode == "pairwise"
        self._sessions = env.sessions if self.cfg.cache else None
        self._client = ChatClient(self.cfg, self.model, key, random.Random(env.seed))

    # -- the protocol ---------------------------------------------------------------------

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """One verdict per item: the rubric score (pointwise) or the mean P_sym against the
        item's siblings (pairwise). Failures are verdicts; this does not raise on API errors."""
        if self.cfg.mode == "pairwise":
            return self._pairwise(items)
        requests = [
            self._request(
                DEFAULT_RUBRIC if self.cfg.rubric is None else self.cfg.rubric,
                dict(prompt=request_text(i.prompt), response=i.response, scale=self.cfg.scale),
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
        self._client.close()

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
                dict(prompt=request_text(i.prompt), first=i.first, second=i.second),
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
            fresh = self._client.ask([m for _, m in todo])
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
        with self._sessions() as s:
            found = cached_responses(s, keys)
        return {key: Answer(text, cached=True) for key, text in found.items()}

    def _cache_put(self, answered: list[tuple[str, Answer]]) -> None:
        assert self._sessions is not None
        rows = [
            CachedAnswer(
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
                store_answers(s, rows)
