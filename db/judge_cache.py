"""The api judge's response cache (table `judge_cache`), shared by every run on the store.

An answer is stored under the hash of its request (model, messages, parameters: no
credentials); the first answer stored for a key is kept. The functions take a session and do
not commit: the caller owns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import JudgeCacheEntry
from db.queries import insert_ignore_counted

LOOKUP_CHUNK = 500
"""Keys per SELECT: bounded IN lists."""


@dataclass(frozen=True)
class CachedAnswer:
    """An answer to store: its request key, the judge model, the text and what it cost."""

    key: str
    model: str
    response: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


def cached_responses(session: Session, keys: Sequence[str]) -> dict[str, str]:
    """The stored answer text of each of `keys` that has one."""
    found: dict[str, str] = {}
    for start in range(0, len(keys), LOOKUP_CHUNK):
        rows = session.execute(
            select(JudgeCacheEntry.key, JudgeCacheEntry.response).where(
                JudgeCacheEntry.key.in_(keys[start : start + LOOKUP_CHUNK])
            )
        )
        found.update((key, text) for key, text in rows)
    return found


def store_answers(session: Session, answers: Sequence[CachedAnswer]) -> int:
    """Store the answers whose key has none yet (a key already stored keeps its first answer);
    returns how many were new."""
    if not answers:
        return 0
    return insert_ignore_counted(session, JudgeCacheEntry, [asdict(a) for a in answers])
