"""The one HTTP retry policy of selfplay's clients (the `api` judge, the `openai` backend).

Retried: 408, 409, 429 and every 5xx status, timeouts, and lost or refused connections; any
other failure is final. The wait before retry k (k from 0) is the server's Retry-After when the
failed response carries one (`retry-after-ms`, or `retry-after` as delta-seconds or an
HTTP-date, RFC 9110 §10.2.3), else full jitter: uniform in [0, min(max_s, base_s · 2^k)]
seconds (AWS Architecture Blog, "Exponential Backoff and Jitter"); either is capped at
`max_s`. The clock, the sleep and the random source are parameters, so a test runs the policy
on a fake clock.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 409, 429})
"""The client-error statuses worth retrying (every 5xx is too)."""
DEFAULT_BASE_S = 0.5
DEFAULT_MAX_S = 30.0


def retryable_status(code: int) -> bool:
    """Whether a response with this HTTP status may succeed when asked again."""
    return code in RETRY_STATUSES or code >= 500


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks to wait: `retry-after-ms`, or `retry-after` as delta-seconds or
    an HTTP-date (`now`: the current Unix time, default the system clock); None when absent or
    unreadable. Header names lower-case (httpx headers match any case)."""
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


@dataclass(frozen=True)
class Failure:
    """One failed attempt: why (already free of secrets), whether asking again may help, and
    the failed response's headers when there was a response."""

    reason: str
    retryable: bool
    headers: Mapping[str, str] | None = None

    @classmethod
    def status(cls, code: int, reason: str, headers: Mapping[str, str]) -> Failure:
        """A response with an error status: retryable as `retryable_status` says."""
        return cls(reason, retryable_status(code), headers)

    @classmethod
    def transport(cls, reason: str) -> Failure:
        """No response at all (a timeout, a lost or refused connection): always retryable."""
        return cls(reason, True)


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_retries` retries after the first attempt; each wait capped at `max_s`."""

    max_retries: int
    base_s: float = DEFAULT_BASE_S
    max_s: float = DEFAULT_MAX_S

    def delay_s(self, retry: int, failure: Failure, rng: random.Random, now: float) -> float:
        """The wait before retry `retry` (from 0): the failure's Retry-After, else full jitter;
        at most `max_s`. `now` is the current Unix time (for an HTTP-date Retry-After)."""
        wait = retry_after_s(failure.headers, now) if failure.headers is not None else None
        if wait is None:
            wait = backoff_s(retry, self.base_s, self.max_s, rng)
        return min(wait, self.max_s)


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """The result of a retried request: its value, or the last failure; and the attempts made."""

    value: T | None
    failure: Failure | None
    attempts: int


async def with_retries(
    attempt: Callable[[], Awaitable[T | Failure]],
    policy: RetryPolicy,
    rng: random.Random,
    *,
    what: str = "request",
    log_level: int = logging.DEBUG,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
) -> Outcome[T]:
    """Await `attempt` until it returns a value, a non-retryable Failure, or the retries are
    spent; never raises what `attempt` returns as a Failure. Each retry is logged at
    `log_level` naming `what`; `clock` gives the Unix time, `sleep` waits."""
    attempts = 0
    while True:
        result = await attempt()
        attempts += 1
        if not isinstance(result, Failure):
            return Outcome(result, None, attempts)
        if not result.retryable or attempts > policy.max_retries:
            return Outcome(None, result, attempts)
        wait = policy.delay_s(attempts - 1, result, rng, clock())
        log.log(log_level, "%s: %s; retry %d in %.2fs", what, result.reason, attempts, wait)
        await sleep(wait)
