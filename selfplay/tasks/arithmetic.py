"""Two-operand integer arithmetic: `Q:66+24=` → `A:90`. The quickstart's verifiable task."""

from __future__ import annotations

import functools
import re

from selfplay.tasks.base import FixedPoolTask, Prompt

MAX_OPERAND = 99
_ANSWER = re.compile(r"A:\s*(-?\d+)")


@functools.cache
def _all_problems() -> tuple[Prompt, ...]:
    """Every problem once, in a fixed order: a+b, and a-b with a >= b, for a, b in 0..99."""
    problems = []
    for a in range(MAX_OPERAND + 1):
        for b in range(MAX_OPERAND + 1):
            problems.append(Prompt(f"Q:{a}+{b}=", str(a + b)))
            if a >= b:
                problems.append(Prompt(f"Q:{a}-{b}=", str(a - b)))
    return tuple(problems)


class ArithmeticTask(FixedPoolTask):
    """Addition and subtraction of operands 0..99 with non-negative results (15,050 problems).

    A seeded shuffle of all problems puts the first `heldout_size` in the held-out set; train
    prompts come from the rest only. Round r draws its prompts uniformly from that train pool
    with an RNG seeded by (seed, r): distinct within a round while n <= the pool size, then
    further shuffled passes over the pool.
    """

    def __init__(self, seed: int, heldout_size: int = 500) -> None:
        super().__init__("arithmetic", _all_problems(), seed, heldout_size)

    def verify(self, prompt: Prompt, response: str) -> tuple[bool, str]:
        """Correct iff the stripped response starts with `A:<int>` and the int is the answer."""
        if prompt.answer is None:
            return False, "no reference answer"
        text = response.strip()
        match = _ANSWER.match(text)
        if match is None:
            shown = text if len(text) <= 40 else text[:40] + "..."
            return False, f"no answer found in {shown!r}"
        got = match.group(1)
        if int(got) != int(prompt.answer):
            return False, f"expected {prompt.answer}, got {got}"
        return True, f"correct: {prompt.answer}"

    def reference_response(self, prompt: Prompt) -> str | None:
        """`A:<answer>`: the completion format the policy is trained to produce."""
        return None if prompt.answer is None else f"A:{prompt.answer}"
