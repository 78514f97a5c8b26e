"""The responses of an `evaluation.reference` file: the win-rate baseline a run's checkpoints
are compared with, as AlpacaEval compares with a strong model's outputs.

One JSON object a line: the held-out prompt (`prompt`, a string or chat messages, or a
`messages` transcript, as in a task's JSONL) and the baseline's `response` to it. Every
held-out prompt needs exactly one line; lines are matched to prompts by their turns (a
prompt's answer, if any, is not compared).
"""

from __future__ import annotations

from pathlib import Path

from selfplay.tasks.base import Prompt
from selfplay.tasks.jsonl import parse_prompt_line
from selfplay.tasks.records import TaskDataError


def _key(prompt: Prompt) -> tuple:
    return tuple(tuple(turn.values()) for turn in prompt.chat())


def read_reference(path: Path, heldout: list[Prompt]) -> list[str]:
    """The reference response to each held-out prompt, in the held-out order.

    Raises TaskDataError naming `path:line` for an unreadable file, a malformed line, a
    prompt given twice or one that is not held out, and naming the first held-out prompt the
    file has no response to.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TaskDataError(f"evaluation.reference: cannot read {path}: {err}") from None
    wanted = {_key(p): i for i, p in enumerate(heldout)}
    found: dict[int, str] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"evaluation.reference: {path}:{lineno}"
        try:
            obj, prompt = parse_prompt_line(line)
        except ValueError as err:
            raise TaskDataError(f"{where}: {err}") from None
        response = obj.get("response")
        if not isinstance(response, str):
            got = "missing" if response is None else type(response).__name__
            raise TaskDataError(f"{where}: field 'response' must be a string, got {got}")
        index = wanted.get(_key(prompt))
        if index is None:
            raise TaskDataError(f"{where}: the prompt {prompt.text[:60]!r} is not held out")
        if index in found:
            raise TaskDataError(f"{where}: a second response to {prompt.text[:60]!r}")
        found[index] = response
    missing = [i for i in range(len(heldout)) if i not in found]
    if missing:
        first = heldout[missing[0]].text[:60]
        raise TaskDataError(
            f"evaluation.reference: {path} has no response to {len(missing)} of the "
            f"{len(heldout)} held-out prompts (the first: {first!r})"
        )
    return [found[i] for i in range(len(heldout))]
