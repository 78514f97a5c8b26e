"""The one HTTP retry policy: which failures retry, Retry-After as seconds or a date, the cap,
full-jitter bounds, and the retry loop on a fake clock (no real waiting)."""

from __future__ import annotations

import asyncio
import email.utils
import random

import pytest

from selfplay.http_retry import (
    Failure,
    Outcome,
    RetryPolicy,
    backoff_s,
    retry_after_s,
    retryable_status,
    with_retries,
)

NOW = 1_800_000_000.0


class FakeClock:
    """Unix time that moves only when the code under test sleeps; records every wait."""

    def __init__(self, now: float = NOW) -> None:
        self.now, self.waits = now, []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def run(script: list, policy: RetryPolicy, clock: FakeClock, seed: int = 0) -> Outcome:
    """`with_retries` over attempts that return the items of `script` in turn."""
    calls = iter(script)

    async def attempt():
        return next(calls)

    return asyncio.run(
        with_retries(attempt, policy, random.Random(seed), sleep=clock.sleep, clock=clock.time)
    )


def http_date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


def test_retry_after_seconds_date_and_ms():
    now = NOW
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after": "1.5"}) == 1.5
    assert retry_after_s({"retry-after": http_date(now + 5)}, now) == 5.0
    assert retry_after_s({"retry-after": http_date(now - 5)}, now) == 0.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "-4"}) == 0.0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


def test_backoff_is_full_jitter_under_the_cap():
    rng = random.Random(0)
    for attempt, bound in [(0, 0.5), (1, 1.0), (2, 2.0), (5, 3.0), (10, 3.0)]:
        draws = [backoff_s(attempt, 0.5, 3.0, rng) for _ in range(2000)]
        assert 0.0 <= min(draws) < 0.05 * bound and 0.95 * bound < max(draws) <= bound


@pytest.mark.parametrize(
    ("code", "retryable"),
    [(408, True), (409, True), (429, True), (500, True), (501, True), (503, True), (599, True)]
    + [(400, False), (401, False), (403, False), (404, False), (422, False)],
)
def test_which_statuses_retry(code, retryable):
    assert retryable_status(code) is retryable
    assert Failure.status(code, f"HTTP {code}", {}).retryable is retryable


def test_a_non_retryable_status_is_final_at_once():
    clock = FakeClock()
    out = run([Failure.status(400, "HTTP 400", {}), "never asked"], RetryPolicy(5), clock)
    assert out.value is None and out.failure.reason == "HTTP 400" and out.attempts == 1
    assert clock.waits == []


def test_transport_failures_retry_until_the_bound_then_give_up():
    clock = FakeClock()
    script = [Failure.transport("timeout")] * 4
    out = run(script, RetryPolicy(3, base_s=0.5, max_s=30.0), clock)
    assert out.value is None and out.failure.reason == "timeout" and out.attempts == 4
    # Three waits, each a full-jitter draw under base·2^k.
    assert len(clock.waits) == 3
    for k, wait in enumerate(clock.waits):
        assert 0.0 <= wait <= 0.5 * 2**k


def test_a_success_after_failures_counts_its_attempts():
    clock = FakeClock()
    script = [Failure.status(429, "HTTP 429", {}), Failure.transport("reset"), {"ok": 1}]
    out = run(script, RetryPolicy(5), clock)
    assert out == Outcome({"ok": 1}, None, 3)
    assert len(clock.waits) == 2


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_retry_after_is_honoured_as_seconds_or_a_date_on_the_clock(form):
    clock = FakeClock()
    value = "7" if form == "seconds" else http_date(NOW + 7)
    script = [Failure.status(503, "HTTP 503", {"retry-after": value}), "done"]
    out = run(script, RetryPolicy(2, base_s=0.001, max_s=60.0), clock)
    assert out.value == "done" and clock.waits == [7.0]


def test_retry_after_and_backoff_are_capped():
    clock = FakeClock()
    script = [
        Failure.status(429, "HTTP 429", {"retry-after": "120"}),
        Failure.status(429, "HTTP 429", {"retry-after": http_date(NOW + 3600)}),
        Failure.transport("reset"),
        "done",
    ]
    out = run(script, RetryPolicy(5, base_s=100.0, max_s=2.5), clock)
    assert out.value == "done" and out.attempts == 4
    assert clock.waits[:2] == [2.5, 2.5] and 0.0 <= clock.waits[2] <= 2.5


def test_an_unreadable_retry_after_falls_back_to_jitter():
    policy = RetryPolicy(1, base_s=0.5, max_s=30.0)
    failure = Failure.status(429, "HTTP 429", {"retry-after": "soon"})
    waits = [policy.delay_s(2, failure, random.Random(s), NOW) for s in range(200)]
    assert all(0.0 <= w <= 2.0 for w in waits) and len(set(waits)) > 100


def test_the_jitter_is_drawn_from_the_given_random_source():
    script = [Failure.transport("reset")] * 3 + ["done"]
    first, again, other = FakeClock(), FakeClock(), FakeClock()
    run(script, RetryPolicy(3), first, seed=1)
    run(script, RetryPolicy(3), again, seed=1)
    run(script, RetryPolicy(3), other, seed=2)
    assert first.waits == again.waits != other.waits
