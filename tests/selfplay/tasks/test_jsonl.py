import json

import pytest

from selfplay.tasks import JsonlTask, Prompt, TaskDataError


def _write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _obj(**kw):
    return json.dumps(kw)


def test_reads_prompts_answers_and_splits_skipping_blank_lines(tmp_path):
    path = _write(
        tmp_path,
        [
            _obj(prompt="a?", answer="A"),
            "",
            "   ",
            _obj(prompt="b?"),
            _obj(prompt="c?", answer=3, split="heldout"),
            _obj(prompt="d?", answer="D", split="train", extra="ignored"),
        ],
    )
    task = JsonlTask(path, seed=0)
    assert task.heldout_prompts() == [Prompt("c?", "3")]
    train = task.train_prompts(0, 3)
    assert sorted(train, key=lambda p: p.text) == [
        Prompt("a?", "A"),
        Prompt("b?", None),
        Prompt("d?", "D"),
    ]


def test_train_prompts_cycle_deterministically(tmp_path):
    path = _write(tmp_path, [_obj(prompt=f"p{i}") for i in range(10)])
    task = JsonlTask(path, seed=0)
    r0, r1 = task.train_prompts(0, 4), task.train_prompts(1, 4)
    assert r0 == JsonlTask(path, seed=0).train_prompts(0, 4)
    assert not set(r0) & set(r1)
    # Rounds walk one cyclic order: 3 rounds of 4 cover all 10, with wrap-around.
    window = r0 + r1 + task.train_prompts(2, 4)
    assert {p.text for p in window} == {f"p{i}" for i in range(10)}
    assert window[10:] == r0[:2]
    assert task.train_prompts(0, 25)[:10] == task.train_prompts(0, 25)[10:20]
    assert JsonlTask(path, seed=1).train_prompts(0, 10) != task.train_prompts(0, 10)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ('["prompt"]', "expected a JSON object, got list"),
        ('{"answer": "x"}', "field 'prompt' (a string or chat messages) or 'messages' is required"),
        ('{"prompt": 5}', "'prompt' must be a non-empty string or a list of chat messages"),
        ('{"prompt": ""}', "'prompt' must be a non-empty string or a list of chat messages"),
        ('{"prompt": []}', "'prompt' must be a non-empty list of chat messages"),
        ('{"prompt": ["hi"]}', "prompt[0] must be an object with 'role' and 'content'"),
        (
            '{"prompt": [{"role": "tool", "content": "x"}]}',
            "prompt[0].role must be one of system, user, assistant, got 'tool'",
        ),
        ('{"prompt": [{"role": "user"}]}', "prompt[0].content must be a non-empty string"),
        ('{"prompt": [{"role": "user", "content": 3}]}', "prompt[0].content must be"),
        (
            '{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
            "prompt[1] must be a user turn (a prompt's last turn), got 'assistant'",
        ),
        ('{"messages": {"role": "user"}}', "'messages' must be a non-empty list of chat messages"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}',
            "messages[1].role must be one of system, user, assistant, got 'bot'",
        ),
        (
            '{"messages": [{"role": "assistant", "content": "a"}]}',
            "'messages' has no user turn before its assistant turns",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"},'
            ' {"role": "assistant", "content": "a"}]}',
            "messages[1] must be a user turn (a prompt's last turn before its final assistant "
            "turns), got 'system'",
        ),
        ('{"prompt": "p", "answer": [1]}', "'answer' must be"),
        ('{"prompt": "p", "answer": true}', "'answer' must be"),
        ('{"prompt": "p", "split": "dev"}', "'split' must be 'train' or 'heldout'"),
    ],
)
def test_malformed_line_names_file_line_and_problem(tmp_path, line, problem):
    path = _write(tmp_path, [_obj(prompt="ok"), "", line, _obj(prompt="ok2")])
    with pytest.raises(TaskDataError) as info:
        JsonlTask(path, seed=0)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and problem in message
    assert isinstance(info.value, ValueError)


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(TaskDataError, match="cannot read"):
        JsonlTask(tmp_path / "nope.jsonl", seed=0)
    with pytest.raises(TaskDataError, match="no train prompts"):
        JsonlTask(_write(tmp_path, [""]), seed=0)


def test_verify(tmp_path):
    task = JsonlTask(_write(tmp_path, [_obj(prompt="p")]), seed=0)
    prompt = Prompt("Capital of France?", "Paris")
    assert task.verify(prompt, "  Paris\n") == (True, "matches the reference answer")
    assert task.verify(prompt, "Paris, of course")[0]
    assert task.verify(prompt, "It is Paris") == (False, "expected 'Paris', got 'It is Paris'")
    assert task.verify(Prompt("Why?"), "because") == (False, "no reference answer")
    assert task.reference_response(prompt) == "Paris"
    assert task.reference_response(Prompt("Why?")) is None


def test_prompts_as_chat_messages_and_transcripts(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "Tips for hiking?"}
    path = _write(
        tmp_path,
        [
            json.dumps({"prompt": [system, user], "answer": "water"}),
            json.dumps(
                {
                    "messages": [
                        user,
                        {"role": "assistant", "content": "Water.", "extra": None},
                        {"role": "user", "content": "And more?"},
                        {"role": "assistant", "content": "Boots."},
                    ]
                }
            ),
            json.dumps({"messages": [user], "split": "heldout", "answer": "A"}),
            json.dumps({"prompt": "plain", "messages": [user]}),  # prompt wins
        ],
    )
    task = JsonlTask(path, seed=0)
    train = sorted(task.train_prompts(0, 3), key=lambda p: p.text)
    assert train == [
        Prompt.conversation(
            [("user", "Tips for hiking?"), ("assistant", "Water."), ("user", "And more?")]
        ),
        Prompt.conversation([("system", "Be brief."), ("user", "Tips for hiking?")], "water"),
        Prompt("plain"),
    ]
    assert train[0].text == "And more?"  # a conversation's text is its last user turn
    assert train[1].chat() == [system, user]
    assert task.heldout_prompts() == [Prompt.conversation([("user", "Tips for hiking?")], "A")]


def test_a_judge_input_line_may_hold_a_conversation():
    from selfplay.tasks.jsonl import parse_prompt_line

    obj, prompt = parse_prompt_line(
        '{"prompt": [{"role": "user", "content": "hi"}], "response": "hello"}'
    )
    assert obj["response"] == "hello"
    assert prompt == Prompt.conversation([("user", "hi")])


def test_heldout_lines_without_answers_are_open_ended_prompts(tmp_path):
    lines = [
        _obj(prompt="t"),
        _obj(prompt="h1", split="heldout"),
        _obj(prompt="h2", answer=2, split="heldout"),
    ]
    task = JsonlTask(_write(tmp_path, lines), seed=0)
    assert task.heldout_prompts() == [Prompt("h1"), Prompt("h2", "2")]
