"""The `tool` critic (CRITIC, Gou et al. 2023): verify a response by running a tool, and write
the critique from what the tool showed.

- "write a function" prompts of a task with hidden unit tests (`UnitTestedTask`, e.g. the
  `code` task): the response's code runs against the tests in the sandbox; the score is the
  fraction of tests passed (partial credit gives pair building a graded signal), the critique
  names the failing calls and how the run ended ("f(0) failed: expected 3, got 4", "timed
  out after 5 s").
- arithmetic prompts (`Q:<expression>=`, the arithmetic task): Python evaluates the
  expression in the sandbox (all of a batch's expressions in one run) and the response's
  number is compared with it; score 1.0 or 0.0.

Anything else is a failed verdict saying no tool applies. A conversation prompt is checked by
its last user turn (`prompt.text`: the question the response answers). Every verdict's trace
holds the program run, its output, the limits and how the run ended.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from selfplay.config import JudgeConfig, ToolJudgeConfig
from selfplay.judges.base import BaseJudge, JudgeEnv, JudgeItem, Verdict
from selfplay.sandbox import Limits, extract_code, run_python, run_unit_tests
from selfplay.tasks.base import UnitTestedTask

# `Q:66+24=`: integers, + - * / % and parentheses only.
_ARITHMETIC_PROMPT = re.compile(r"\s*Q:\s*([0-9+\-*/%() ]+?)\s*=\s*$")
_NUMBER_ANSWER = re.compile(r"\s*(?:A:)?\s*(-?\d+)")
_VALUES_FILE = "values.json"


def limits_of(cfg: ToolJudgeConfig) -> Limits:
    """The sandbox limits of the judge's config section."""
    return Limits(
        wall_timeout_s=cfg.wall_timeout_s,
        cpu_time_s=cfg.cpu_time_s,
        memory_mb=cfg.memory_mb,
        max_processes=cfg.max_processes,
        max_file_mb=cfg.max_file_mb,
        max_output_chars=cfg.max_output_chars,
    )


class ToolJudge(BaseJudge):
    """Runs unit tests or evaluates arithmetic in the sandbox; never raises from `judge`."""

    name = "tool"

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        self.task = env.task
        self.limits = limits_of(cfg.tool)
        self.max_parallel = cfg.tool.max_parallel

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """One verdict per item, in order."""
        verdicts: list[Verdict | None] = [None] * len(items)
        if isinstance(self.task, UnitTestedTask):
            # Samples of one prompt often repeat (a trained policy's right answer): run each
            # distinct (prompt, code) once.
            keys = [(item.prompt.text, extract_code(item.response)) for item in items]
            first = {key: item for key, item in zip(keys, items, strict=True)}
            with ThreadPoolExecutor(self.max_parallel) as pool:
                done = dict(zip(first, pool.map(self._unit_tests, first.values()), strict=True))
            return [done[key] for key in keys]
        arithmetic = {}
        for i, item in enumerate(items):
            match = _ARITHMETIC_PROMPT.match(item.prompt.text)
            if match:
                arithmetic[i] = match.group(1)
            else:
                verdicts[i] = Verdict.failure(
                    "no tool applies: the prompt is neither an arithmetic question "
                    "'Q:<expression>=' nor a task with unit tests"
                )
        if arithmetic:
            for i, verdict in self._arithmetic(items, arithmetic).items():
                verdicts[i] = verdict
        return [v for v in verdicts if v is not None]

    def _unit_tests(self, item: JudgeItem) -> Verdict:
        start = time.perf_counter()
        try:
            tests = self.task.unit_tests(item.prompt)  # type: ignore[attr-defined]
        except KeyError:
            return Verdict.failure(f"the task has no unit tests for {item.prompt.text[:60]!r}")
        try:
            report = run_unit_tests(extract_code(item.response), tests, self.limits)
        except OSError as err:  # the machine refused a process or a temp dir: record it
            return Verdict.failure(f"the sandbox could not run: {err}")
        trace = {**report.trace, "limits": asdict(self.limits)}
        return Verdict(
            status="ok",
            score=report.fraction,
            critique=report.critique,
            trace=trace,
            latency_s=time.perf_counter() - start,
        )

    def _arithmetic(self, items: list[JudgeItem], exprs: dict[int, str]) -> dict[int, Verdict]:
        """Evaluate every distinct expression in one sandbox run, then compare each response."""
        start = time.perf_counter()
        distinct = sorted(set(exprs.values()))
        program = _arithmetic_program(distinct)
        try:
            run = run_python(program, self.limits, read_back=(_VALUES_FILE,))
        except OSError as err:  # the machine refused a process or a temp dir: record it
            return {i: Verdict.failure(f"the sandbox could not run: {err}") for i in exprs}
        latency = (time.perf_counter() - start) / len(exprs)
        # Per verdict: the program as it runs for that one expression (the batch's holds them
        # all; storing it with every verdict would repeat it len(exprs) times).
        trace: dict[str, Any] = {
            "tool": "python",
            "kind": "arithmetic",
            "batch_size": len(distinct),
            "run": run.to_trace(),
            "limits": asdict(self.limits),
        }
        try:
            values = json.loads(run.files[_VALUES_FILE]) if run.ok else None
        except (KeyError, ValueError):
            values = None
        if not isinstance(values, dict):
            reason = f"the python tool {run.describe(self.limits)}"
            return {i: Verdict.failure(reason, trace={**trace, "program": program}) for i in exprs}
        out = {}
        for i, expr in exprs.items():
            trace_i = {**trace, "expression": expr, "program": _arithmetic_program([expr])}
            out[i] = _compare(expr, values.get(expr), items[i].response, trace_i, latency)
        return out


def _arithmetic_program(exprs: list[str]) -> str:
    """Evaluates each expression with no builtins; writes {expression: value or error} as JSON
    to _VALUES_FILE (a file, not stdout: a big batch would overflow the captured output)."""
    return f"""import json
values = {{}}
for expr in {json.dumps(exprs)}:
    try:
        values[expr] = eval(expr, {{"__builtins__": {{}}}})
    except Exception as err:
        values[expr] = f"{{type(err).__name__}}: {{err}}"
with open({_VALUES_FILE!r}, "w") as fh:
    json.dump(values, fh)
"""


def _compare(
    expr: str, value: Any, response: str, trace: dict[str, Any], latency_s: float
) -> Verdict:
    """Score 1.0 iff the response's number equals the value Python computed."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Verdict.failure(f"python could not evaluate {expr}: {value}", trace=trace)
    match = _NUMBER_ANSWER.match(response)
    if match is None:
        shown = response.strip()[:40]
        return Verdict(
            status="ok",
            score=0.0,
            critique=f"python says {expr} = {value}; the response gives no number ({shown!r})",
            trace=trace,
            latency_s=latency_s,
        )
    got = int(match.group(1))
    verdict = "correct" if got == value else "wrong"
    return Verdict(
        status="ok",
        score=1.0 if got == value else 0.0,
        critique=f"python says {expr} = {value}; the response says {got}: {verdict}",
        trace=trace,
        latency_s=latency_s,
    )
