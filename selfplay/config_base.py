"""The base of every config section, shared by `selfplay.config` and the sections that live next
to their consumers (selfplay.training.config, selfplay.judge_config)."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """A config section: unknown keys are errors, and a loaded config is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def registered(name: str, known: Iterable[str], what: str) -> str:
    """`name` if it is one of `known`, else a ValueError listing them (a field validator's
    error, reported under the field's path)."""
    known = list(known)
    if name not in known:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    return name
