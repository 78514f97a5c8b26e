"""The api judge's response cache on SQLite and PostgreSQL: lookups, first answer kept,
bounded IN lists, and no commit by the functions themselves."""

from __future__ import annotations

from sqlalchemy import func, select

from db.engine import session_factory, transaction
from db.judge_cache import LOOKUP_CHUNK, CachedAnswer, cached_responses, store_answers
from db.models import JudgeCacheEntry


def key(n: int) -> str:
    return f"{n:064x}"


def test_stored_answers_are_found_by_key_and_missing_keys_are_absent(engine):
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        new = store_answers(
            s,
            [
                CachedAnswer(key(1), "judge", "Score: 7/10", 120, 9, 0.002),
                CachedAnswer(key(2), "judge", "Winner: A"),
            ],
        )
    assert new == 2
    with sessions() as s:
        assert cached_responses(s, [key(1), key(2), key(3)]) == {
            key(1): "Score: 7/10",
            key(2): "Winner: A",
        }
        assert cached_responses(s, []) == {}
        row = s.scalar(select(JudgeCacheEntry).where(JudgeCacheEntry.key == key(1)))
        assert (row.model, row.prompt_tokens, row.completion_tokens) == ("judge", 120, 9)
        assert row.cost == 0.002 and row.created_at is not None


def test_a_key_keeps_its_first_answer_and_a_duplicate_is_a_no_op(engine):
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        assert store_answers(s, [CachedAnswer(key(1), "judge", "first")]) == 1
    with transaction(sessions) as s:
        again = [CachedAnswer(key(1), "judge", "second"), CachedAnswer(key(2), "judge", "other")]
        assert store_answers(s, again) == 1
        assert store_answers(s, []) == 0
    with sessions() as s:
        assert cached_responses(s, [key(1), key(2)]) == {key(1): "first", key(2): "other"}
        assert s.scalar(select(func.count()).select_from(JudgeCacheEntry)) == 2


def test_lookups_of_many_keys_run_in_bounded_chunks(engine):
    sessions = session_factory(engine)
    n = 2 * LOOKUP_CHUNK + 7
    with transaction(sessions) as s:
        store_answers(s, [CachedAnswer(key(i), "judge", f"answer {i}") for i in range(0, n, 2)])
    with sessions() as s:
        found = cached_responses(s, [key(i) for i in range(n)])
    assert found == {key(i): f"answer {i}" for i in range(0, n, 2)}


def test_the_caller_owns_the_transaction(engine):
    sessions = session_factory(engine)
    with sessions() as s:
        store_answers(s, [CachedAnswer(key(1), "judge", "uncommitted")])
        s.rollback()
    with sessions() as s:
        assert cached_responses(s, [key(1)]) == {}
