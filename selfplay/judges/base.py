"""The judge protocol: a judge labels responses; failure is a value, never an exception."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from selfplay.tasks.base import Prompt


@dataclass(frozen=True)
class Verdict:
    """One pointwise judgment. `status == "failed"` carries `error`, and `score` is None."""

    status: Literal["ok", "failed"]
    score: float | None = None
    critique: str | None = None
    trace: dict[str, Any] | None = None
    error: str | None = None
    latency_s: float | None = None
    tokens: int | None = None
    cost: float | None = None

    @classmethod
    def failure(cls, error: str, **kw: Any) -> Verdict:
        """A failed judgment with its reason."""
        return cls(status="failed", error=error, **kw)


@dataclass(frozen=True)
class JudgeItem:
    prompt: Prompt
    response: str
    extra: dict[str, Any] = field(default_factory=dict)


class Judge(Protocol):
    """Scores a batch of responses; returns one Verdict per item, in order, and never raises."""

    name: str

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """Judge each item."""
        ...
