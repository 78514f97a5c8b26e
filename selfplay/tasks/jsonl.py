"""Prompts from a JSONL file: one `{"prompt": ..., "answer": ..., "split": ...}` object a line."""

from __future__ import annotations

import json
import random
from pathlib import Path

from selfplay.tasks.base import Prompt


class TaskDataError(ValueError):
    """A task data file that cannot be used; the message names the file and the line."""


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_prompt_line(line: str) -> tuple[dict, Prompt]:
    """A JSONL line → (its object, the prompt of its `prompt` and optional `answer` fields);
    raises ValueError with the problem in words. Shared with `selfplay judge`'s input."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    text = obj.get("prompt")
    if not isinstance(text, str) or not text:
        raise ValueError("field 'prompt' must be a non-empty string")
    answer = obj.get("answer")
    if isinstance(answer, int) and not isinstance(answer, bool):
        answer = str(answer)
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise ValueError("field 'answer' must be a non-empty string or an integer")
    return obj, Prompt(text, answer)


def _parse_line(line: str) -> tuple[Prompt, bool]:
    """One line → (prompt, is_heldout); raises ValueError with the problem in words."""
    obj, prompt = parse_prompt_line(line)
    answer = prompt.answer
    split = obj.get("split", "train")
    if split not in ("train", "heldout"):
        raise ValueError(f"field 'split' must be 'train' or 'heldout', got {split!r}")
    if split == "heldout" and answer is None:
        raise ValueError("a held-out prompt needs an 'answer'")
    return prompt, split == "heldout"


class JsonlTask:
    """Prompts read from a JSONL file.

    Each non-blank line is an object with a string `prompt`, an optional `answer` (string or
    integer) and an optional `split`: `"heldout"` lines (which need an answer) form the held-out
    set, every other line is a train prompt; the held-out set is empty when no line is marked.
    Train prompts are shuffled once with the seed, then round r takes the window
    [r*n, (r+1)*n) of that order, wrapping around, so rounds cycle through the file.
    """

    def __init__(self, path: Path | str, seed: int = 0) -> None:
        self.path = Path(path)
        self.seed = seed
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise TaskDataError(f"cannot read {self.path}: {err}") from None
        train: list[Prompt] = []
        heldout: list[Prompt] = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                prompt, is_heldout = _parse_line(line)
            except ValueError as err:
                raise TaskDataError(f"{self.path}, line {lineno}: {err}") from None
            (heldout if is_heldout else train).append(prompt)
        if not train:
            raise TaskDataError(f"{self.path}: no train prompts")
        random.Random(f"jsonl:{seed}").shuffle(train)
        self._train = train
        self._heldout = heldout

    def train_prompts(self, round_index: int, n: int) -> list[Prompt]:
        """Round `round_index`'s window of `n` prompts from the seeded cyclic order."""
        size = len(self._train)
        start = round_index * n
        return [self._train[(start + i) % size] for i in range(n)]

    def heldout_prompts(self) -> list[Prompt]:
        """The lines marked `"split": "heldout"`, in file order."""
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
        """The answer itself: the file gives no other response format."""
        return prompt.answer
