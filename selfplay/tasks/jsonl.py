"""Prompts from a JSONL file: one `{"prompt": ..., "answer": ..., "split": ...}` object a line,
the prompt a string or chat messages (or a `messages` transcript instead)."""

from __future__ import annotations

import json
from pathlib import Path

from selfplay.tasks.base import GivenPromptsTask, Prompt
from selfplay.tasks.records import TaskDataError, parse_answer, parse_prompt, parse_transcript


def parse_prompt_line(line: str) -> tuple[dict, Prompt]:
    """A JSONL line → (its object, the prompt of its `prompt` or `messages` and optional
    `answer` fields); raises ValueError with the problem in words. Shared with `selfplay
    judge`'s input."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    answer = parse_answer(obj.get("answer"), "answer")
    if "prompt" in obj:
        return obj, parse_prompt(obj["prompt"], "prompt", answer)
    if "messages" in obj:
        return obj, parse_transcript(obj["messages"], "messages", answer)
    raise ValueError("field 'prompt' (a string or chat messages) or 'messages' is required")


def _parse_line(line: str) -> tuple[Prompt, bool]:
    """One line → (prompt, is_heldout); raises ValueError with the problem in words."""
    obj, prompt = parse_prompt_line(line)
    split = obj.get("split", "train")
    if split not in ("train", "heldout"):
        raise ValueError(f"field 'split' must be 'train' or 'heldout', got {split!r}")
    return prompt, split == "heldout"


class JsonlTask(GivenPromptsTask):
    """Prompts read from a JSONL file.

    Each non-blank line is an object with a `prompt` (a string, or chat messages ending with a
    user turn) or a `messages` transcript (chat messages; trailing assistant turns dropped),
    `prompt` winning when a line has both; an optional `answer` (string or integer); and an
    optional `split`: `"heldout"` lines form the held-out set (with answers they are scored
    by accuracy, without by win rate or judge score: `evaluation.metric`), every other line
    is a train prompt; the held-out set is empty when no line is marked. Rounds
    cycle through the train prompts in an order shuffled once with the seed.
    """

    def __init__(self, path: Path | str, seed: int = 0) -> None:
        self.path = Path(path)
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
        super().__init__("jsonl", train, heldout, seed)
