"""The `tool` critic on arithmetic and on the code task: correct, wrong, crashing, hanging."""

from __future__ import annotations

import json

import pytest

from selfplay.config import JudgeConfig, ToolJudgeConfig
from selfplay.judges import JudgeEnv, JudgeItem, make_judge
from selfplay.judges.tool import ToolJudge
from selfplay.tasks import ArithmeticTask, CodeTask, Prompt


def tool_judge(task, **tool) -> ToolJudge:
    cfg = JudgeConfig(name="tool", tool=ToolJudgeConfig(**tool))
    judge = make_judge(cfg, JudgeEnv(task=task))
    assert isinstance(judge, ToolJudge)
    return judge


@pytest.fixture(scope="module")
def code_task() -> CodeTask:
    return CodeTask(0, 100)


def test_arithmetic_is_checked_against_python(code_task):
    task = ArithmeticTask(0, 500)
    q1, q2 = Prompt("Q:66+24=", "90"), Prompt("Q:50-8=", "42")
    items = [
        JudgeItem(q1, "A:90"),
        JudgeItem(q1, "A:89"),
        JudgeItem(q2, "A:42"),
        JudgeItem(q2, "I think so"),
    ]
    verdicts = tool_judge(task).judge(items)
    assert [v.status for v in verdicts] == ["ok"] * 4
    assert [v.score for v in verdicts] == [1.0, 0.0, 1.0, 0.0]
    assert verdicts[0].critique == "python says 66+24 = 90; the response says 90: correct"
    assert verdicts[1].critique == "python says 66+24 = 90; the response says 89: wrong"
    assert "gives no number" in verdicts[3].critique
    trace = verdicts[1].trace
    assert trace["tool"] == "python" and trace["expression"] == "66+24"
    assert "66+24" in trace["program"] and trace["run"]["exit_code"] == 0
    assert trace["limits"]["wall_timeout_s"] == 5.0


def test_a_whole_round_of_arithmetic_is_one_sandbox_run():
    task = ArithmeticTask(0, 500)
    prompts = task.train_prompts(0, 1000)
    items = [JudgeItem(p, f"A:{p.answer}") for p in prompts]
    items[7] = JudgeItem(prompts[7], f"A:{int(prompts[7].answer) + 1}")
    verdicts = tool_judge(task).judge(items)
    assert [v.score for v in verdicts] == [0.0 if i == 7 else 1.0 for i in range(1000)]
    assert verdicts[0].trace["run"] == verdicts[999].trace["run"]


def test_a_prompt_no_tool_applies_to_is_a_failed_verdict():
    verdicts = tool_judge(ArithmeticTask(0, 500)).judge([JudgeItem(Prompt("Hello?"), "hi")])
    assert verdicts[0].status == "failed" and "no tool applies" in verdicts[0].error


def test_code_correct_wrong_crashing_and_partial(code_task):
    prompt = next(p for p in code_task.train_prompts(0, 800) if "x plus 3." in p.text)
    items = [
        JudgeItem(prompt, "def f(x): return x+3"),
        JudgeItem(prompt, "```python\ndef f(x):\n    return x + 4\n```"),
        JudgeItem(prompt, "def f(x): return 1/0"),
        JudgeItem(prompt, "def f(x) return x"),
        JudgeItem(prompt, "def f(x): return x+3 if x >= 0 else x"),
        JudgeItem(prompt, "def g(x): return x+3"),
        JudgeItem(prompt, "A: def f(x): return x+3"),  # the same code as the first: run once
    ]
    v = tool_judge(code_task).judge(items)
    assert [x.status for x in v] == ["ok"] * 7
    assert v[6] is v[0]
    assert v[0].score == 1.0 and v[0].critique == "all 8 tests passed"
    assert v[1].score == 0.0 and "f(-7) failed: expected -4, got -3" in v[1].critique
    assert v[2].score == 0.0 and "f(-7) raised ZeroDivisionError: division by zero" in v[2].critique
    assert v[3].score == 0.0 and v[3].critique.startswith("the code does not load: SyntaxError")
    assert "run" not in v[3].trace and v[3].trace["compile_error"].startswith("SyntaxError")
    # Partial credit: the fraction of the 8 tests passed (x >= 0 for 6 of the inputs).
    assert v[4].score == pytest.approx(6 / 8) and v[4].critique.startswith("6/8 tests passed")
    assert v[5].critique == "the code does not load: no function f(x) is defined"
    case = v[1].trace["cases"][0]
    assert case == {"args": [-7], "expected": -4, "got": "-3", "passed": False}
    assert v[1].trace["run"]["containment"]["network_namespace"] in (True, False)
    assert "files" not in v[1].trace["run"]
    json.dumps([x.trace for x in v])  # the store keeps traces as JSON


def test_code_that_hangs_times_out_with_the_tests_it_passed_kept(code_task):
    prompt = next(p for p in code_task.train_prompts(0, 800) if "x plus 3." in p.text)
    hang = "def f(x):\n    while x > 10:\n        pass\n    return x+3"
    v = tool_judge(code_task, wall_timeout_s=1.0).judge([JudgeItem(prompt, hang)])[0]
    # Inputs -7..5 pass, then f(13) spins until the 1 s wall timeout.
    assert v.status == "ok" and v.score == pytest.approx(6 / 8)
    assert "the run timed out after 1 s (wall clock) after 6 of 8 tests" in v.critique
    assert v.trace["run"]["killed_by"] == "timeout"


def test_hostile_code_is_reported_in_the_critique(code_task):
    prompt = next(p for p in code_task.train_prompts(0, 800) if "x plus 3." in p.text)
    items = [
        JudgeItem(prompt, "import os\nwhile True:\n    print('spam' * 100)"),
        JudgeItem(prompt, "x = bytearray(10 * 1024**3)"),
    ]
    v = tool_judge(code_task, memory_mb=256, max_output_chars=200).judge(items)
    assert v[0].score == 0.0 and "killed after writing over" in v[0].critique
    assert v[0].trace["run"]["stdout_truncated"]
    assert v[1].score == 0.0 and "MemoryError" in v[1].critique


def test_a_conversation_is_checked_by_its_last_user_turn(code_task):
    system = ("system", "You are a careful assistant.")
    q = Prompt.conversation([system, ("user", "Hi!"), ("assistant", "Hello."), ("user", "Q:6*7=")])
    verdicts = tool_judge(ArithmeticTask(0, 500)).judge(
        [JudgeItem(q, "A:42"), JudgeItem(q, "A:41")]
    )
    assert [v.score for v in verdicts] == [1.0, 0.0]
    assert verdicts[0].critique == "python says 6*7 = 42; the response says 42: correct"
    plain = code_task.heldout_prompts()[0]
    conv = Prompt.conversation([system, ("user", plain.text)])
    reference = code_task.reference_response(plain)
    (verdict,) = tool_judge(code_task).judge([JudgeItem(conv, reference)])
    assert (
        verdict.status == "ok" and verdict.score == 1.0 and verdict.critique == "all 8 tests passed"
    )
