"""The task protocol: where prompts come from and how a response is checked."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from selfplay.sandbox import FunctionTests


ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Prompt:
    """A prompt as given to the policy, with its reference answer when the task has one.

    A prompt is a plain string or a conversation. `messages` holds a conversation's turns as
    (role, content) tuples (roles from ROLES, the last one a user turn); `text` is then its last
    user turn, what verifiers, search and one-line displays read. A plain prompt has
    `messages` None. The policy sees either through `selfplay.rendering`, never `text` alone.
    """

    text: str
    answer: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None

    @classmethod
    def conversation(cls, messages: Sequence[tuple[str, str]], answer: str | None = None) -> Prompt:
        """A conversation prompt from its (role, content) turns; its text is the last turn."""
        turns = tuple((str(role), str(content)) for role, content in messages)
        return cls(text=turns[-1][1], answer=answer, messages=turns)

    @classmethod
    def from_row(cls, text: str, answer: str | None, messages: list[dict] | None) -> Prompt:
        """The prompt a `prompts` row stores (its text, answer and JSON messages)."""
        if messages is None:
            return cls(text, answer)
        return cls.conversation([(m["role"], m["content"]) for m in messages], answer)

    def stored_messages(self) -> list[dict[str, str]] | None:
        """The JSON a `prompts` row keeps in `messages`: the turns, or None for plain text."""
        return self.chat() if self.messages is not None else None

    def chat(self) -> list[dict[str, str]]:
        """The prompt as chat messages: its turns, or one user turn holding the plain text."""
        turns = self.messages if self.messages is not None else (("user", self.text),)
        return [{"role": role, "content": content} for role, content in turns]


class Task(Protocol):
    """A prompt source with a verifier."""

    def train_prompts(self, round_index: int, n: int) -> list[Prompt]:
        """The `n` prompts of round `round_index`: deterministic, never from the held-out set."""
        ...

    def all_train_prompts(self) -> list[Prompt]:
        """Every prompt `train_prompts` can return, for any round and size, each once (what
        the loop checks before it writes anything)."""
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


@runtime_checkable
class UnitTestedTask(Protocol):
    """A task whose prompts ask for a function that hidden unit tests check (the `tool` judge
    runs them)."""

    def unit_tests(self, prompt: Prompt) -> FunctionTests:
        """The hidden tests of `prompt`; raises KeyError for a prompt the task does not know."""
        ...


class FixedPoolTask:
    """A task over a fixed list of problems: a seeded shuffle puts the first `heldout_size` in
    the held-out set; round r draws its train prompts from the rest with an RNG seeded by
    (name, seed, r): distinct within a round while n <= the pool size, then further shuffled
    passes over the pool. Subclasses give the problems and `verify`."""

    def __init__(self, name: str, problems: Sequence[Prompt], seed: int, heldout_size: int) -> None:
        if not 1 <= heldout_size < len(problems):
            raise ValueError(f"heldout_size must be in 1..{len(problems) - 1}, got {heldout_size}")
        self.name, self.seed = name, seed
        order = list(range(len(problems)))
        random.Random(f"{name}-heldout:{seed}").shuffle(order)
        self._heldout = [problems[i] for i in order[:heldout_size]]
        self._pool = [problems[i] for i in sorted(order[heldout_size:])]

    def train_prompts(self, round_index: int, n: int) -> list[Prompt]:
        """`n` prompts for round `round_index`, a pure function of (seed, round_index, n)."""
        rng = random.Random(f"{self.name}-train:{self.seed}:{round_index}")
        out: list[Prompt] = []
        while len(out) < n:
            out.extend(rng.sample(self._pool, min(n - len(out), len(self._pool))))
        return out

    def all_train_prompts(self) -> list[Prompt]:
        """The train pool."""
        return list(self._pool)

    def heldout_prompts(self) -> list[Prompt]:
        """The fixed held-out problems."""
        return list(self._heldout)


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class GivenPromptsTask:
    """A task over prompts a user gives (a JSONL file, a dataset): the train prompts are
    shuffled once with an RNG seeded by (name, seed), then round r takes the window
    [r*n, (r+1)*n) of that order, wrapping around, so rounds cycle through them. A response
    is checked against the prompt's reference answer."""

    def __init__(
        self, name: str, train: Sequence[Prompt], heldout: Sequence[Prompt], seed: int
    ) -> None:
        self.seed = seed
        self._train = list(train)
        random.Random(f"{name}:{seed}").shuffle(self._train)
        self._heldout = list(heldout)

    def train_prompts(self, round_index: int, n: int) -> list[Prompt]:
        """Round `round_index`'s window of `n` prompts from the seeded cyclic order."""
        size = len(self._train)
        start = round_index * n
        return [self._train[(start + i) % size] for i in range(n)]

    def all_train_prompts(self) -> list[Prompt]:
        """The train prompts, in their seeded cyclic order."""
        return list(self._train)

    def heldout_prompts(self) -> list[Prompt]:
        """The held-out prompts, in the order the task gives them."""
        return list(self._heldout)

    def verify(self, prompt: Prompt, response: str) -> tuple[bool, str]:
        """Correct iff the stripped response equals, or starts with, the stripped answer."""
        if prompt.answer is None:
            return False, "no reference answer"
        answer, text = prompt.answer.strip(), response.strip()
        if text.startswith(answer):
            return True, "matches the reference answer"
        return False, f"expected {_show(answer)}, got {_show(text)}"

    def reference_response(self, prompt: Prompt) -> str | None:
        """The answer itself: the data gives no other response format."""
        return prompt.answer
