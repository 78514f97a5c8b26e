"""The `api` judge against a real OpenAI-compatible HTTP server (tests/fake_openai_server.py),
through the real `openai` client: answers, both orders, faults and retries, the store cache,
tokens and cost, and the loop end to end."""

from __future__ import annotations

import asyncio
import math
import os
import re

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from db.engine import session_factory
from db.models import JudgeCacheEntry
from selfplay.config import ApiJudgeConfig, ConfigError, JudgeConfig
from selfplay.judges import JudgeEnv, JudgeItem, PairItem, make_judge, symmetric_compare
from selfplay.judges.api import (
    ApiJudge,
    parse_preference,
    parse_score,
    request_key,
    request_text,
)
from selfplay.tasks.arithmetic import ArithmeticTask
from selfplay.tasks.base import Prompt
from tests.fake_openai_server import reset, serve, stats

KEY = "sk-test-api-judge-key"
P = Prompt("Q:3+4=", "7")


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def _serve(*flags: str):
    return serve("--require-key-env", "FAKE_KEY", *flags, env={**os.environ, "FAKE_KEY": KEY})


@pytest.fixture(scope="module")
def server():
    """Pointwise scores; pairwise "Winner: A|B|tie", a tie going to the first-shown (biased)."""
    with _serve("--first-wins-ties") as url:
        yield url


@pytest.fixture
def judges():
    """Build api judges (closed afterwards): judges(url, sessions=None, **api_section)."""
    made: list[ApiJudge] = []

    def build(url: str, sessions=None, **api) -> ApiJudge:
        cfg = JudgeConfig(name="api", api={"model": "fake-judge", "base_url": url, **api})
        judge = make_judge(cfg, JudgeEnv(task=ArithmeticTask(0, 10), sessions=sessions))
        made.append(judge)
        return judge

    yield build
    for judge in made:
        judge.close()


# -- parsing, keys: pure functions -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "scale", "expected"),
    [
        ("Good. Score: 7/10", 10, 0.7),
        ("**Score:** 8 / 10", 10, 0.8),
        ("Reasoning first; score = 4", 5, 0.8),
        ("Rating: 3 out of 5", 10, 0.6),
        ("The score is 9.", 10, 0.9),
        ("7", 10, 0.7),
        ("Draft Score: 2/10. Final Score: 9/10", 10, 0.9),
        ("Score: 0/10", 10, 0.0),
        ("Score: 11/10", 10, None),
        ("Score: -1", 10, None),
        ("Scores range from 1 to 10", 10, None),
        ("I cannot grade this.", 10, None),
    ],
)
def test_parse_score(text, scale, expected):
    got = parse_score(text, scale)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A is right. Winner: A", 1.0),
        ("**Winner:** B", 0.0),
        ("Winner: tie", 0.5),
        ("The winner is Response A.", 1.0),
        ("P(A) = 0.73", 0.73),
        ("p(a): .25", 0.25),
        ("B", 0.0),
        ("tie.", 0.5),
        ("P(A) = 1.5", None),
        ("Winner: Both are fine", None),
        ("both are fine", None),
    ],
)
def test_parse_preference(text, expected):
    assert parse_preference(text) == (None if expected is None else pytest.approx(expected))


def test_request_key_covers_model_messages_and_parameters():
    msgs = [{"role": "user", "content": "x"}]
    key = request_key("m", msgs, {"temperature": 0.0})
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert key == request_key("m", [dict(m) for m in msgs], {"temperature": 0.0})
    assert key != request_key("m2", msgs, {"temperature": 0.0})
    assert key != request_key("m", [{"role": "user", "content": "y"}], {"temperature": 0.0})
    assert key != request_key("m", msgs, {"temperature": 0.5})


# -- config ---------------------------------------------------------------------------------


def test_config_errors_name_the_field(monkeypatch):
    with pytest.raises(ValidationError, match="rubric: must contain the {response}"):
        ApiJudgeConfig(rubric="Grade {prompt}")
    with pytest.raises(ValidationError, match="rubric: placeholders"):
        ApiJudgeConfig(rubric="Grade {response} by {criteria}")
    with pytest.raises(ValidationError, match="api.model is required"):
        JudgeConfig(name="api")
    monkeypatch.delenv("OPENAI_API_KEY")
    cfg = JudgeConfig(name="api", api={"model": "m"})
    with pytest.raises(ConfigError, match="judge.api.api_key_env: .*OPENAI_API_KEY is not set"):
        make_judge(cfg, JudgeEnv(task=ArithmeticTask(0, 10)))


# -- against the server ---------------------------------------------------------------------


def test_pointwise_scores_tokens_cost_and_unparseable_answers(server, judges):
    judge = judges(server, cache=False, input_cost_per_mtok=2.0, output_cost_per_mtok=10.0)
    items = [
        JudgeItem(P, "A:7"),
        JudgeItem(P, "A:9"),
        JudgeItem(P, "[[answer:I refuse to grade this]]"),
        JudgeItem(P, "[[score:5]]"),
    ]
    verdicts = judge.judge(items)
    assert [v.status for v in verdicts] == ["ok", "ok", "failed", "ok"]
    assert [v.score for v in verdicts] == [1.0, pytest.approx(0.8), None, 0.5]
    assert verdicts[0].critique.endswith("Score: 10/10")
    bad = verdicts[2]
    assert "unparseable answer" in bad.error and bad.trace["raw"] == "I refuse to grade this"
    for v in verdicts:
        pt, ct = v.trace["prompt_tokens"], v.trace["completion_tokens"]
        assert pt > 50 and ct > 0 and v.tokens == pt + ct
        assert v.cost == pytest.approx((2.0 * pt + 10.0 * ct) / 1e6)
        assert v.trace["cached"] is False and v.trace["attempts"] == 1 and v.latency_s > 0
    assert "with_telemetry_headers" not in stats(server)  # the client's X-Stainless-* left off


def test_compare_asks_both_orders_and_averages_out_position_bias(judges):
    # p = σ(s_A − s_B) + 0.2: a judge that favours the first-shown response by 0.2.
    with _serve("--pairwise", "prob", "--position-bias", "0.2") as url:
        judge = judges(url, cache=False)
        better, worse = "[[score:6]]", "[[score:5]]"
        comps = symmetric_compare(judge, [PairItem(P, better, worse), PairItem(P, worse, worse)])
        # Two orders of two pairs; the equal pair reads the same both ways: asked once.
        assert stats(url)["requests"] == 3
    sigma = 1 / (1 + math.exp(-1))
    assert comps[0].trace["p_ab"] == pytest.approx(sigma + 0.2, abs=1e-5)
    assert comps[0].trace["p_ba"] == pytest.approx(1 - sigma + 0.2, abs=1e-5)
    assert comps[0].prob == pytest.approx(sigma, abs=1e-5)  # the bias cancels
    assert comps[0].trace["position_flip"] is False
    # Equal responses: the first-shown wins both times (0.7, 0.7): a flip, P_sym exactly ½.
    assert comps[1].trace["p_ab"] == pytest.approx(0.7) == comps[1].trace["p_ba"]
    assert comps[1].prob == pytest.approx(0.5) and comps[1].trace["position_flip"] is True
    assert all(c.tokens > 0 for c in comps)


def test_pairwise_loop_scores_mean_win_probability_against_siblings(server, judges):
    judge = judges(server, cache=False, mode="pairwise")
    assert judge.needs_siblings is True
    texts = ["A:7", "A:9", "A:5"]  # right (10), two off by 2 (8 each)
    items = [
        JudgeItem(P, t, {"siblings": [s for s in texts if s != t], "repeat": 0}) for t in texts
    ]
    reset(server)
    verdicts = judge.judge([*items, JudgeItem(P, "A:7", {"repeat": 0})])
    # Each ordered pair is asked once: 3 · 2 requests serve the 12 uses.
    assert stats(server)["requests"] == 6
    right, wrong1, wrong2, lonely = verdicts
    assert right.score == 1.0 and right.trace["position_flips"] == 0
    # Both orders of each comparison were asked now (no cache): not served from a cache.
    assert right.trace["comparisons"] == [
        {"p_ab": 1.0, "p_ba": 0.0, "position_flip": False, "cached": False},
        {"p_ab": 1.0, "p_ba": 0.0, "position_flip": False, "cached": False},
    ]
    # The two wrong answers tie; the server gives a tie to the first-shown: a position flip.
    for v in (wrong1, wrong2):
        assert v.score == pytest.approx(0.25) and v.trace["position_flips"] == 1
        flipped = {"p_ab": 1.0, "p_ba": 1.0, "position_flip": True, "cached": False}
        assert flipped in v.trace["comparisons"]
    assert lonely.status == "failed" and "no siblings" in lonely.error
    # Each request is charged to one verdict only: the verdicts sum to the six calls.
    fresh = judges(server, cache=False)
    ordered = [PairItem(P, a, b) for a in texts for b in texts if a != b]
    assert sum(v.tokens or 0 for v in verdicts) == sum(c.tokens for c in fresh.compare(ordered))


def test_label_noise_keeps_the_pairwise_judge_fed_with_siblings(server):
    cfg = JudgeConfig(
        name="api",
        flip_rate=0.5,
        api={"model": "fake-judge", "base_url": server, "mode": "pairwise", "cache": False},
    )
    judge = make_judge(cfg, JudgeEnv(task=ArithmeticTask(0, 10)))
    assert judge.needs_siblings is True
    (v,) = judge.judge([JudgeItem(P, "A:7", {"siblings": ["A:9"], "repeat": 0})])
    judge.close()
    assert v.status == "ok" and v.score in (0.0, 1.0)


def test_fault_mode_every_judgment_completes_or_fails_after_the_bound(judges):
    flags = ("--fault-rate", "0.3", "--fault-seed", "1", "--hang-s", "3")
    # A 1 s timeout: far above a normal answer even on a loaded box, far below a 3 s hang.
    fast = dict(cache=False, timeout_s=1.0, backoff_base_s=0.02, backoff_max_s=0.1)
    items = [JudgeItem(P, f"A:{n}") for n in range(60)]
    bounded = re.compile(
        r"^(HTTP 429|HTTP 500|timeout after 1.0s).*\(gave up after (\d) attempts\)$"
    )
    with _serve(*flags) as url:
        verdicts = judges(url, max_retries=2, max_concurrency=16, **fast).judge(items)
        counts = stats(url)
        assert len(verdicts) == 60
        for v in verdicts:
            if v.status == "ok":
                assert 0 < v.score <= 1 and 1 <= v.trace["attempts"] <= 3
            else:
                m = bounded.match(v.error)
                assert m and m.group(2) == "3", v.error
        assert any(v.status == "ok" and v.trace["attempts"] > 1 for v in verdicts)
        assert all(counts[f"fault_{k}"] > 0 for k in ("429", "500", "hang")), counts
        faults = sum(counts[f"fault_{k}"] for k in ("429", "500", "hang"))
        assert 0.15 < faults / counts["requests"] < 0.45, counts

        # No retries: about 30% fail, each with its status; and the faults are seeded.
        reset(url)
        once = judges(url, max_retries=0, **fast).judge(items)
        reset(url)
        again = judges(url, max_retries=0, **fast).judge(items)
    failed = [v.error for v in once if v.status == "failed"]
    assert 8 <= len(failed) <= 30
    kinds = {re.match(r"HTTP \d+|timeout", e).group() for e in failed}
    assert kinds == {"HTTP 429", "HTTP 500", "timeout"}
    assert all(e.endswith("(gave up after 1 attempts)") for e in failed)
    assert [v.status for v in once] == [v.status for v in again]


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_retry_after_is_honoured_and_capped(judges, form):
    flags = ("--fault-rate", "1", "--fault-kinds", "429", "--retry-after", "2")
    with _serve(*flags, "--retry-after-form", form) as url:
        tiny = dict(cache=False, max_retries=1, backoff_base_s=0.001)
        (honoured,) = judges(url, backoff_max_s=10, **tiny).judge([JudgeItem(P, "A:7")])
        (capped,) = judges(url, backoff_max_s=0.05, **tiny).judge([JudgeItem(P, "A:8")])
    for v in (honoured, capped):
        assert v.status == "failed" and v.error.startswith("HTTP 429")
        assert v.error.endswith("(gave up after 2 attempts)")
    # Without Retry-After the wait would be ≤ 1 ms; the HTTP-date form rounds to whole seconds.
    assert honoured.latency_s > 1.0
    assert capped.latency_s < 0.9


def test_client_errors_fail_at_once_and_connection_errors_after_the_bound(
    server, judges, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    before = stats(server).get("unauthorized", 0)
    (v,) = judges(server, cache=False).judge([JudgeItem(P, "A:7")])
    assert v.status == "failed" and v.error.startswith("HTTP 401")
    assert "not retryable" in v.error and v.trace["attempts"] == 1
    assert stats(server)["unauthorized"] == before + 1

    closed = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    (v,) = judges(closed, cache=False, max_retries=2, backoff_base_s=0.01).judge(
        [JudgeItem(P, "A:7")]
    )
    assert v.status == "failed" and v.error.startswith("connection error")
    assert v.error.endswith("(gave up after 3 attempts)")


def test_the_key_is_scrubbed_from_answers_and_errors_that_echo_it(judges):
    with _serve("--echo-key", "--fault-rate", "0.5", "--fault-kinds", "500") as url:
        verdicts = judges(url, cache=False, max_retries=0).judge(
            [JudgeItem(P, f"A:{n}") for n in range(12)]
        )
    kept = [v.critique or v.error for v in verdicts]
    assert {v.status for v in verdicts} == {"ok", "failed"}
    assert all("Bearer [redacted]" in t and KEY not in t for t in kept)


def test_cache_in_the_store_answers_repeated_requests(server, judges, engine):
    sessions = session_factory(engine)
    items = [JudgeItem(P, "A:7"), JudgeItem(P, "A:9"), JudgeItem(P, "A:5"), JudgeItem(P, "A:7")]
    reset(server)
    first = judges(server, sessions, input_cost_per_mtok=3.0).judge(items)
    assert stats(server)["requests"] == 3  # the duplicate in the batch is asked once
    assert [v.trace["cached"] for v in first] == [False, False, False, True]
    assert first[3].cost == 0.0 and first[3].tokens == 0 and first[0].cost > 0
    with sessions() as s:
        rows = s.scalars(select(JudgeCacheEntry)).all()
        assert len(rows) == 3 and {r.model for r in rows} == {"fake-judge"}
        stored = {r.response: r for r in rows}
        assert stored[first[0].critique].cost == pytest.approx(first[0].cost)
        assert stored[first[0].critique].prompt_tokens == first[0].trace["prompt_tokens"]

    # Another judge (another run) on the same store: nothing reaches the server.
    second = judges(server, sessions, input_cost_per_mtok=3.0).judge(items)
    assert stats(server)["requests"] == 3
    assert [v.score for v in second] == [v.score for v in first]
    assert all(v.trace["cached"] and v.cost == 0.0 and v.tokens == 0 for v in second)

    # cache: false asks again; sampled answers (temperature > 0) are cached per repeat.
    judges(server, sessions, cache=False).judge(items[:1])
    assert stats(server)["requests"] == 4
    hot = judges(server, sessions, temperature=0.7)
    hot.judge([JudgeItem(P, "A:7", {"repeat": 0}), JudgeItem(P, "A:7", {"repeat": 1})])
    assert stats(server)["requests"] == 6
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(JudgeCacheEntry)) == 5


def test_judge_runs_from_inside_a_running_event_loop(server, judges):
    judge = judges(server, cache=False)

    async def caller():
        return judge.judge([JudgeItem(P, "A:7")])

    (v,) = asyncio.run(caller())
    assert v.status == "ok" and v.score == 1.0


# -- conversation prompts -------------------------------------------------------------------

# The arithmetic is asked in an earlier turn: the fake judge scores "A:5" right only if it is
# shown that turn (it scores the first "Q:a+b=" of the request block).
CONVERSATION = Prompt.conversation(
    [
        ("system", "Answer in the form A:<number>."),
        ("user", "Q:2+3="),
        ("assistant", "A:4"),
        ("user", "That is wrong. Try again."),
    ]
)


def test_request_text_shows_every_turn_of_a_conversation():
    assert request_text(CONVERSATION) == (
        "A conversation; the response answers its last user turn.\n\n"
        "### System:\nAnswer in the form A:<number>.\n\n### User:\nQ:2+3=\n\n"
        "### Assistant:\nA:4\n\n### User:\nThat is wrong. Try again."
    )
    # A plain prompt, and a conversation of one user turn, are their text (one cache key).
    assert request_text(P) == "Q:3+4=" == request_text(Prompt.conversation([("user", "Q:3+4=")]))


def test_the_judge_sees_the_turns_of_a_conversation(server, judges):
    judge = judges(server, cache=False)
    right, off_by_three, alone = judge.judge(
        [
            JudgeItem(CONVERSATION, "A:5"),
            JudgeItem(CONVERSATION, "A:8"),
            JudgeItem(Prompt(CONVERSATION.text), "A:5"),
        ]
    )
    assert right.score == 1.0 and off_by_three.score == pytest.approx(0.7)
    # Without the earlier turns there is no question to check: a hash score, not 10/10.
    assert alone.status == "ok" and alone.score != 1.0
    (comp,) = symmetric_compare(judge, [PairItem(CONVERSATION, "A:5", "A:8")])
    assert comp.prob == 1.0
