"""The task protocol: where prompts come from and how a response is checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Prompt:
    """A prompt as given to the policy, with its reference answer when the task has one."""

    text: str
    answer: str | None = None


class Task(Protocol):
    """A prompt source with a verifier."""

    def train_prompts(self, round_index: int, n: int) -> list[Prompt]:
        """The `n` prompts of round `round_index`: deterministic, never from the held-out set."""
        ...

    def heldout_prompts(self) -> list[Prompt]:
        """The fixed evaluation prompts (same list on every call)."""
        ...

    def verify(self, prompt: Prompt, response: str) -> tuple[bool, str]:
        """(correct?, short critique) of a response, e.g. (False, "expected 90, got 89")."""
        ...

    def reference_response(self, prompt: Prompt) -> str | None:
        """A correct response in the policy's output format (SFT target), or None if unknown."""
        ...
