"""A prompt from a record's fields: a JSONL line's object or a dataset's row.

A prompt is a non-empty string or a conversation in TRL's conversational format: a list of
`{"role": ..., "content": ...}` messages, roles from `ROLES`, contents non-empty strings, other
keys ignored. A `prompt` conversation ends with a user turn (the policy answers next); a
`messages` conversation (a chat transcript, TRL's language-modeling format) may end with the
dataset's own assistant turn(s), which are dropped: the prompt is every turn up to the last
user turn. Every problem is a ValueError naming the field (and the message index) in words;
the callers add the file and line or the dataset and row.
"""

from __future__ import annotations

from collections.abc import Mapping

from selfplay.tasks.base import ROLES, Prompt


class TaskDataError(ValueError):
    """Task data that cannot be used; the message names the file and line or the dataset and
    row."""


def parse_messages(value: object, field: str, answered: bool) -> tuple[tuple[str, str], ...]:
    """Chat messages → the prompt's (role, content) turns; raises ValueError naming `field[i]`.

    `answered`: the list may end with assistant turns (a `messages` transcript), dropped here;
    otherwise its last turn must be the user's.
    """
    if not isinstance(value, list) or not value:
        raise ValueError(f"field {field!r} must be a non-empty list of chat messages")
    turns = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, Mapping):
            raise ValueError(f"{where} must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str) or not content:
            raise ValueError(f"{where}.content must be a non-empty string")
        turns.append((role, content))
    last = len(turns) - 1
    if answered:
        while last >= 0 and turns[last][0] == "assistant":
            last -= 1
        if last < 0:
            raise ValueError(f"field {field!r} has no user turn before its assistant turns")
    if turns[last][0] != "user":
        after = " before its final assistant turns" if last < len(turns) - 1 else ""
        raise ValueError(
            f"{field}[{last}] must be a user turn (a prompt's last turn{after}), "
            f"got {turns[last][0]!r}"
        )
    return tuple(turns[: last + 1])


def parse_answer(value: object, field: str) -> str | None:
    """A reference answer: a non-empty string, an integer (as its digits) or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"field {field!r} must be a non-empty string or an integer")
    return value


def parse_prompt(value: object, field: str, answer: str | None) -> Prompt:
    """A prompt field's value: a non-empty string, or chat messages ending with a user turn."""
    if isinstance(value, str) and value:
        return Prompt(value, answer)
    if not isinstance(value, list):
        raise ValueError(f"field {field!r} must be a non-empty string or a list of chat messages")
    return Prompt.conversation(parse_messages(value, field, answered=False), answer)


def parse_transcript(value: object, field: str, answer: str | None) -> Prompt:
    """A messages field's value: chat messages whose trailing assistant turns are dropped."""
    return Prompt.conversation(parse_messages(value, field, answered=True), answer)
