"""The `code` task: "write a function" prompts checked by hidden unit tests in the sandbox."""

from __future__ import annotations

import re

import pytest

from selfplay.config import TaskConfig
from selfplay.tasks import CodeTask, make_task
from selfplay.tasks.code import TEST_INPUTS


def test_prompts_are_deterministic_and_train_never_draws_from_heldout():
    task = CodeTask(0, 100)
    assert task.heldout_prompts() == CodeTask(0, 100).heldout_prompts()
    assert CodeTask(1, 100).heldout_prompts() != task.heldout_prompts()
    heldout = set(task.heldout_prompts())
    r0 = task.train_prompts(0, 300)
    assert r0 == CodeTask(0, 100).train_prompts(0, 300) and r0 != task.train_prompts(1, 300)
    assert not heldout & set(task.train_prompts(0, 2000))
    assert len(heldout) == 100 and len(set(r0)) == 300


def test_heldout_size_must_leave_train_prompts():
    with pytest.raises(ValueError, match="heldout_size must be in 1..791"):
        CodeTask(0, 792)


def test_make_task_builds_the_code_task():
    task = make_task(TaskConfig(name="code", heldout_size=50), seed=2)
    assert isinstance(task, CodeTask) and len(task.heldout_prompts()) == 50


def test_hidden_tests_match_the_reference_solution():
    task = CodeTask(0, 100)
    prompt = next(p for p in task.train_prompts(0, 800) if "the distance between x" in p.text)
    c = int(prompt.text.rstrip(".\n").rsplit(" ", 1)[1])
    tests = task.unit_tests(prompt)
    assert [t.args for t in tests.tests] == [(x,) for x in TEST_INPUTS]
    assert [t.expected for t in tests.tests] == [abs(x - c) for x in TEST_INPUTS]
    assert task.reference_response(prompt) == f"def f(x): return abs(x-{c})"


def test_every_reference_response_passes_its_tests_and_a_wrong_one_fails():
    task = CodeTask(0, 100)
    prompts = task.heldout_prompts()[:3]
    for prompt in prompts:
        assert task.verify(prompt, task.reference_response(prompt)) == (True, "all 8 tests passed")
    ok, critique = task.verify(prompts[0], "def f(x): return 0")
    assert not ok and re.match(r"[0-7]/8 tests passed; ", critique)
    assert "failed: expected" in critique
