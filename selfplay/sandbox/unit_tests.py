"""Hidden unit tests, run in the sandbox (by the `code` task's `verify` and the `tool` critic).

`run_unit_tests(code, tests, limits)` compiles the code (code that does not compile fails
without a run), then runs `harness_program` in the sandbox: it loads the code, calls the
function on each test and rewrites RESULTS_FILE after every test, so a run killed half-way
still shows what passed. The report's critique is in the words of the run ("f(0) failed:
expected 3, got 4", "timed out after 5 s").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from selfplay.sandbox.supervisor import Limits, SandboxResult, run_python

RESULTS_FILE = "results.json"
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class UnitTest:
    """One hidden test: `f(*args)` must equal `expected` (same type)."""

    args: tuple[int, ...]
    expected: int


@dataclass(frozen=True)
class FunctionTests:
    """The hidden tests of one "write a function" prompt."""

    function: str
    tests: tuple[UnitTest, ...]


@dataclass(frozen=True)
class UnitTestReport:
    """What running a response's code against the hidden tests showed.

    `passed` of `total` tests passed; `critique` says why the others failed, in the words of
    the run ("f(0) failed: expected 3, got 4", "timed out after 5 s"); `trace` holds the
    program run, its output and the limits hit (SandboxResult.to_trace()).
    """

    passed: int
    total: int
    critique: str
    trace: dict[str, Any]

    @property
    def fraction(self) -> float:
        """Share of the tests passed, in [0, 1]."""
        return self.passed / self.total


def extract_code(response: str) -> str:
    """The code in a response: the first ```python fenced block if there is one, else the
    whole response (an optional leading `A:` dropped)."""
    fenced = _FENCE.search(response)
    if fenced:
        return fenced.group(1)
    text = response.strip()
    return text[2:].lstrip() if text.startswith("A:") else text


def harness_program(code: str, tests: FunctionTests) -> str:
    """The program the sandbox runs: loads the code (a syntax error or a crash while loading
    is reported, not fatal), calls the function on each test, and rewrites RESULTS_FILE after
    every test so a run killed half-way still shows what passed."""
    cases = [[list(t.args), t.expected] for t in tests.tests]
    return f"""import json

def _save(report):
    with open({RESULTS_FILE!r}, "w") as fh:
        json.dump(report, fh)

def _show(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."

def _main():
    report = {{"load_error": None, "cases": []}}
    _save(report)
    namespace = {{"__name__": "solution"}}
    try:
        exec(compile({code!r}, "solution.py", "exec"), namespace)
    except BaseException as err:
        report["load_error"] = f"{{type(err).__name__}}: {{err}}"[:300]
        _save(report)
        return
    fn = namespace.get({tests.function!r})
    if not callable(fn):
        report["load_error"] = "no function {tests.function}(x) is defined"
        _save(report)
        return
    for args, expected in {json.dumps(cases)}:
        case = {{"args": args, "expected": expected}}
        try:
            got = fn(*args)
            case["got"] = _show(got)
            case["passed"] = type(got) is type(expected) and got == expected
        except BaseException as err:
            case["error"] = f"{{type(err).__name__}}: {{err}}"[:200]
            case["passed"] = False
        report["cases"].append(case)
        _save(report)

_main()
"""


def run_unit_tests(code: str, tests: FunctionTests, limits: Limits) -> UnitTestReport:
    """Run `code` against `tests` in the sandbox; never raises for what the code does.

    Code that does not compile fails without a sandbox run (compiling executes nothing, and a
    young policy writes mostly such code, while a run costs ~0.15 s): the trace then holds
    the compiler's error instead of a run.
    """
    total = len(tests.tests)
    try:
        compile(code, "solution.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as err:
        error = f"{type(err).__name__}: {err}"
        trace = {"tool": "python", "kind": "unit_tests", "code": code, "compile_error": error}
        return UnitTestReport(0, total, f"the code does not load: {error}", trace)
    program = harness_program(code, tests)
    run = run_python(program, limits, read_back=(RESULTS_FILE,))
    trace: dict[str, Any] = {"tool": "python", "kind": "unit_tests", "program": program}
    trace["run"] = run.to_trace()
    try:
        report = json.loads(run.files[RESULTS_FILE])
        cases, load_error = list(report["cases"]), report["load_error"]
    except (KeyError, TypeError, ValueError):
        cases, load_error = [], None
    trace["cases"] = cases
    passed = sum(1 for c in cases if isinstance(c, dict) and c.get("passed") is True)
    return UnitTestReport(passed, total, _critique(run, limits, tests, cases, load_error), trace)


def _critique(
    run: SandboxResult,
    limits: Limits,
    tests: FunctionTests,
    cases: list[Any],
    load_error: str | None,
) -> str:
    """The critique from what the run showed: the first failures, and how the run ended."""
    name = tests.function
    if load_error is not None:
        return f"the code does not load: {load_error}"
    lines = []
    for case in [c for c in cases if not c.get("passed")][:3]:
        call = f"{name}({', '.join(map(str, case['args']))})"
        if "error" in case:
            lines.append(f"{call} raised {case['error']}")
        else:
            lines.append(f"{call} failed: expected {case['expected']}, got {case.get('got')}")
    done = len(cases)
    passed = sum(1 for c in cases if c.get("passed") is True)
    if done < len(tests.tests) or not run.ok:
        lines.append(f"the run {run.describe(limits)} after {done} of {len(tests.tests)} tests")
    if not lines:
        return f"all {len(tests.tests)} tests passed"
    return f"{passed}/{len(tests.tests)} tests passed; " + "; ".join(lines)
