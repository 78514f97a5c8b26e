import re

import pytest

from selfplay.tasks import ArithmeticTask, Prompt

PATTERN = re.compile(r"Q:(\d+)([+-])(\d+)=")


def test_prompts_are_well_formed_with_correct_non_negative_answers():
    task = ArithmeticTask(0, 500)
    for p in task.heldout_prompts() + task.train_prompts(0, 2000):
        a, op, b = PATTERN.fullmatch(p.text).groups()
        assert 0 <= int(a) <= 99 and 0 <= int(b) <= 99
        expected = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert expected >= 0 and p.answer == str(expected)
    ops = {PATTERN.fullmatch(p.text).group(2) for p in task.train_prompts(0, 100)}
    assert ops == {"+", "-"}


def test_heldout_is_fixed_by_the_seed():
    a, b = ArithmeticTask(0, 500), ArithmeticTask(0, 500)
    assert len(a.heldout_prompts()) == 500
    assert a.heldout_prompts() == b.heldout_prompts() == a.heldout_prompts()
    assert ArithmeticTask(1, 500).heldout_prompts() != a.heldout_prompts()
    assert len(ArithmeticTask(0, 1000).heldout_prompts()) == 1000
    assert len(set(a.heldout_prompts())) == 500


def test_train_prompts_are_deterministic_per_round_and_fresh_across_rounds():
    task = ArithmeticTask(0, 500)
    r0 = task.train_prompts(0, 2048)
    assert r0 == ArithmeticTask(0, 500).train_prompts(0, 2048)
    assert len(r0) == 2048 and len(set(r0)) == 2048  # distinct within a round
    assert task.train_prompts(1, 2048) != r0
    assert ArithmeticTask(1, 500).train_prompts(0, 2048) != r0


def test_train_never_draws_from_heldout():
    task = ArithmeticTask(7, 500)
    heldout = {p.text for p in task.heldout_prompts()}
    for round_index in (-1, 0, 1, 2):
        assert not heldout & {p.text for p in task.train_prompts(round_index, 2048)}
    # More than the whole train pool: every non-held-out problem, still none held out.
    many = task.train_prompts(0, 20_000)
    assert len(many) == 20_000
    assert len({p.text for p in many}) == 15_050 - 500
    assert not heldout & {p.text for p in many}


def test_heldout_size_is_validated():
    with pytest.raises(ValueError, match="heldout_size"):
        ArithmeticTask(0, 15_050)


@pytest.mark.parametrize(
    ("response", "ok", "critique"),
    [
        ("A:90", True, "correct: 90"),
        (" A:90\n", True, "correct: 90"),
        ("A:90 and more", True, "correct: 90"),
        ("A:89", False, "expected 90, got 89"),
        ("A:900", False, "expected 90, got 900"),
        ("A:-90", False, "expected 90, got -90"),
        ("xyz", False, "no answer found in 'xyz'"),
        ("", False, "no answer found in ''"),
        ("90", False, "no answer found in '90'"),
        ("B:90", False, "no answer found in 'B:90'"),
    ],
)
def test_verify(response, ok, critique):
    task = ArithmeticTask(0, 500)
    assert task.verify(Prompt("Q:66+24=", "90"), response) == (ok, critique)


def test_verify_truncates_long_garbage_and_needs_an_answer():
    task = ArithmeticTask(0, 500)
    ok, critique = task.verify(Prompt("Q:1+1=", "2"), "x" * 100)
    assert not ok and len(critique) < 80 and critique.endswith("...'")
    assert task.verify(Prompt("Q:1+1="), "A:2") == (False, "no reference answer")


def test_reference_response_verifies():
    task = ArithmeticTask(0, 500)
    for p in task.train_prompts(0, 50):
        assert task.reference_response(p) == f"A:{p.answer}"
        assert task.verify(p, task.reference_response(p))[0]
