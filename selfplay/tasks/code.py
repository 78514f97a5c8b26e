"""Tiny "write a function" problems, checked by hidden unit tests run in the sandbox.

`Write a Python function f(x) that returns x plus 3.` → `def f(x): return x+3`. Eight
families (plus, minus, times, modulo, larger of, smaller of, distance to, squared plus) with a
constant c in 1..99: 792 problems, small enough for the tiny character-level model to learn
by copying the constant into the right template. Each problem's hidden tests call f on
`TEST_INPUTS` and compare with the reference function's values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from selfplay.sandbox import (
    FunctionTests,
    Limits,
    UnitTest,
    UnitTestReport,
    extract_code,
    run_unit_tests,
)
from selfplay.tasks.base import FixedPoolTask, Prompt

FUNCTION = "f"
TEST_INPUTS = (-7, -1, 0, 1, 2, 5, 13, 100)

# (words in the prompt, the reference body, the reference function of (x, c))
_FAMILIES: tuple[tuple[str, str, Callable[[int, int], int]], ...] = (
    ("x plus {c}", "x+{c}", lambda x, c: x + c),
    ("x minus {c}", "x-{c}", lambda x, c: x - c),
    ("x times {c}", "x*{c}", lambda x, c: x * c),
    ("x modulo {c}", "x%{c}", lambda x, c: x % c),
    ("the larger of x and {c}", "max(x,{c})", max),
    ("the smaller of x and {c}", "min(x,{c})", min),
    ("the distance between x and {c}", "abs(x-{c})", lambda x, c: abs(x - c)),
    ("x squared plus {c}", "x*x+{c}", lambda x, c: x * x + c),
)
MAX_CONSTANT = 99


@functools.cache
def _all_problems() -> tuple[tuple[Prompt, FunctionTests], ...]:
    problems = []
    for words, body, fn in _FAMILIES:
        for c in range(1, MAX_CONSTANT + 1):
            text = f"Write a Python function {FUNCTION}(x) that returns {words.format(c=c)}.\n"
            solution = f"def {FUNCTION}(x): return {body.format(c=c)}"
            tests = tuple(UnitTest((x,), fn(x, c)) for x in TEST_INPUTS)
            problems.append((Prompt(text, solution), FunctionTests(FUNCTION, tests)))
    return tuple(problems)


class CodeTask(FixedPoolTask):
    """The 792 "write a function" problems. A seeded shuffle puts the first `heldout_size` in
    the held-out set; round r draws its train prompts from the rest with an RNG seeded by
    (seed, r), like the arithmetic task. `verify` runs the hidden tests in the sandbox."""

    def __init__(self, seed: int, heldout_size: int = 100, limits: Limits | None = None) -> None:
        problems = _all_problems()
        super().__init__("code", [prompt for prompt, _ in problems], seed, heldout_size)
        self.limits = limits or Limits()
        self._tests = {prompt.text: tests for prompt, tests in problems}

    def unit_tests(self, prompt: Prompt) -> FunctionTests:
        """The hidden tests of one of this task's prompts (KeyError for any other prompt)."""
        return self._tests[prompt.text]

    def verify(self, prompt: Prompt, response: str) -> tuple[bool, str]:
        """Correct iff the response's code passes every hidden test in the sandbox."""
        report = _verify_cached(extract_code(response), self.unit_tests(prompt), self.limits)
        return report.passed == report.total, report.critique

    def reference_response(self, prompt: Prompt) -> str | None:
        """A one-line correct solution: the SFT target."""
        return prompt.answer


@functools.lru_cache(maxsize=1024)
def _verify_cached(code: str, tests: FunctionTests, limits: Limits) -> UnitTestReport:
    """Evaluations repeat the same outputs of a small model: run each (code, tests) once."""
    return run_unit_tests(code, tests, limits)
