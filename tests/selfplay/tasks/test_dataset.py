"""The dataset task on real `datasets` objects: JSON data files through `load_dataset` and
directories `save_to_disk` wrote, both read back by the task (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfplay.config import DatasetConfig, TaskConfig
from selfplay.tasks import DatasetTask, Prompt, TaskDataError, make_task

datasets = pytest.importorskip("datasets")

USER = {"role": "user", "content": "Name a fruit."}
SYSTEM = {"role": "system", "content": "Answer in one word."}


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_dataset's Arrow cache under the test's directory, not ~/.cache/huggingface."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def _rows(n: int) -> list[dict]:
    """n rows: even ones plain prompts, odd ones conversations; an answer on every third."""
    rows = []
    for i in range(n):
        prompt = f"question {i}" if i % 2 == 0 else [SYSTEM, {"role": "user", "content": f"q{i}"}]
        rows.append({"prompt": prompt, "answer": str(i) if i % 3 == 0 else None, "id": i})
    return rows


def _chat_rows(n: int) -> list[dict]:
    """n conversation rows (a saved dataset's column holds one type); answers on even rows."""
    return [
        {
            "prompt": [SYSTEM, {"role": "user", "content": f"q{i}"}],
            "answer": f"a{i}" if i % 2 == 0 else None,
        }
        for i in range(n)
    ]


def _json_file(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _saved(tmp_path: Path, rows: list[dict], name: str = "saved") -> Path:
    path = tmp_path / name
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def _task(seed: int = 0, **fields: object) -> DatasetTask:
    return DatasetTask(DatasetConfig(**fields), seed=seed)


def test_json_data_files_give_plain_and_conversation_prompts(tmp_path: Path):
    path = _json_file(tmp_path, _rows(4))
    task = _task(path="json", data_files=str(path), answer_field="answer")
    got = sorted(task.train_prompts(0, 4), key=lambda p: p.text)
    assert got == [
        Prompt.conversation([("system", "Answer in one word."), ("user", "q1")]),
        Prompt.conversation([("system", "Answer in one word."), ("user", "q3")], "3"),
        Prompt("question 0", "0"),
        Prompt("question 2"),
    ]
    assert task.heldout_prompts() == []


def test_a_saved_dataset_and_a_saved_dataset_dict_split(tmp_path: Path):
    rows = _chat_rows(6)
    one = _task(path=str(_saved(tmp_path, rows)), answer_field="answer")
    assert len(set(one.train_prompts(0, 6))) == 6
    both = tmp_path / "dict"
    train, test = datasets.Dataset.from_list(rows), datasets.Dataset.from_list(rows[:2])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(both))
    from_dict = _task(path=str(both), split="test", answer_field="answer")
    assert sorted(from_dict.train_prompts(0, 2), key=lambda p: p.text) == [
        Prompt.conversation([("system", "Answer in one word."), ("user", "q0")], "a0"),
        Prompt.conversation([("system", "Answer in one word."), ("user", "q1")]),
    ]
    # The answer column is read only when named.
    assert all(p.answer is None for p in _task(path=str(both)).train_prompts(0, 6))


def test_a_messages_transcript_drops_its_final_assistant_turns(tmp_path: Path):
    transcript = [
        SYSTEM,
        USER,
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Pear."},
    ]
    path = _saved(tmp_path, [{"messages": transcript}])
    (prompt,) = _task(path=str(path), messages_field="messages").train_prompts(0, 1)
    assert prompt.chat() == transcript[:4]
    assert prompt.text == "Another?"


def test_heldout_share_and_train_order_are_functions_of_the_seed(tmp_path: Path):
    rows = [{"prompt": f"p{i}", "answer": str(i) if i % 2 else None} for i in range(40)]
    path = str(_saved(tmp_path, rows))

    def task(seed: int) -> DatasetTask:
        return _task(seed, path=path, answer_field="answer", heldout_share=0.25)

    a, again, other = task(0), task(0), task(1)
    assert len(a.heldout_prompts()) == 10
    assert all(p.answer is not None for p in a.heldout_prompts())  # drawn among answered rows
    assert a.heldout_prompts() == again.heldout_prompts() != other.heldout_prompts()
    assert a.train_prompts(2, 7) == again.train_prompts(2, 7)
    train = a.train_prompts(0, 30)
    assert len(set(train)) == 30 and not set(train) & set(a.heldout_prompts())
    assert a.train_prompts(0, 31)[30] == train[0]  # the 30 train prompts, then around again
    assert a.all_train_prompts() == train  # every round's prompts come from these
    assert a.verify(Prompt("p", "7"), " 7 apples") == (True, "matches the reference answer")


def test_make_task_builds_the_dataset_task(tmp_path: Path):
    cfg = TaskConfig(name="dataset", dataset={"path": str(_saved(tmp_path, _chat_rows(3)))})
    assert isinstance(make_task(cfg, seed=0), DatasetTask)


@pytest.mark.parametrize(
    ("rows", "fields", "problem"),
    [
        ([{"question": "q"}], {}, "no field 'prompt' (its fields: question); set task.dataset"),
        (
            [{"prompt": "q"}],
            {"answer_field": "gold"},
            "no field 'gold' (its fields: prompt)",
        ),
        ([{"prompt": "q"}, {"prompt": None}], {}, "row 1: field 'prompt' is null"),
        ([{"prompt": "q"}, {"prompt": ""}], {}, "row 1: field 'prompt' must be a non-empty"),
        (
            [{"prompt": [USER]}, {"prompt": [{"role": "user", "content": ""}]}],
            {},
            "row 1: prompt[0].content must be a non-empty string",
        ),
        (
            [{"prompt": [USER, {"role": "assistant", "content": "x"}]}],
            {},
            "row 0: prompt[1] must be a user turn (a prompt's last turn), got 'assistant'",
        ),
        (
            [{"messages": [{"role": "narrator", "content": "x"}]}],
            {"messages_field": "messages"},
            "row 0: messages[0].role must be one of system, user, assistant, got 'narrator'",
        ),
        (
            [{"prompt": "q", "answer": "a"}],
            {"answer_field": "answer", "heldout_share": 0.5},
            "no train prompts left after the held-out share",
        ),
        (
            [{"prompt": "q", "answer": None}, {"prompt": "r", "answer": "a"}] * 2,
            {"answer_field": "answer", "heldout_share": 0.75},
            "heldout_share 0.75 asks for 3 held-out prompts, only 2 rows have an answer",
        ),
    ],
)
def test_unusable_rows_name_the_dataset_and_row(tmp_path: Path, rows, fields, problem):
    path = _saved(tmp_path, rows)
    with pytest.raises(TaskDataError) as info:
        _task(path=str(path), **fields)
    assert f"dataset {path} (split train)" in str(info.value)
    assert problem in str(info.value)


def test_unusable_datasets_are_task_data_errors(tmp_path: Path):
    empty = tmp_path / "empty"
    datasets.Dataset.from_dict({"prompt": []}).save_to_disk(str(empty))
    with pytest.raises(TaskDataError, match=f"^dataset {empty}: no rows$"):
        _task(path=str(empty))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(TaskDataError, match="a directory that is no dataset"):
        _task(path=str(tmp_path / "nothing"))
    both = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(_chat_rows(2))}).save_to_disk(
        str(both)
    )
    with pytest.raises(TaskDataError, match="no split 'test' .*; it has train$"):
        _task(path=str(both), split="test")
    path = _json_file(tmp_path, _rows(2))
    with pytest.raises(TaskDataError, match="no split 'dev' .*; it has train$"):
        _task(path="json", data_files=str(path), split="dev")
    path.write_text('{"prompt": "fine"}\n{"prompt": \n')
    with pytest.raises(TaskDataError, match="^dataset json: cannot load: DatasetGenerationError"):
        _task(path="json", data_files=str(path))
    with pytest.raises(TaskDataError, match="^dataset json: cannot load: FileNotFoundError"):
        _task(path="json", data_files=str(tmp_path / "missing.jsonl"))
    path.write_text("")
    with pytest.raises(TaskDataError, match=f"^dataset json: data file {path}: no rows$"):
        _task(path="json", data_files=[str(path)])
    with pytest.raises(TaskDataError, match="^dataset ./nowhere: no such directory$"):
        _task(path="./nowhere")


def _break(path: Path, name: str, text: str | None) -> None:
    """Overwrite `path/name` with `text`, or delete it (None)."""
    if text is None:
        (path / name).unlink()
    else:
        (path / name).write_text(text)


@pytest.mark.parametrize(
    ("kind", "name", "text", "problem"),
    [
        (
            "dataset",
            "state.json",
            "{",
            "state.json: invalid JSON: Expecting property name enclosed in double quotes "
            "(line 1, column 2)",
        ),
        ("dataset", "state.json", "[1]", "state.json: expected a JSON object, got list"),
        (
            "dataset",
            "dataset_info.json",
            '{"features": ',
            "dataset_info.json: invalid JSON: Expecting value (line 1, column 14)",
        ),
        ("dataset", "dataset_info.json", "7", "dataset_info.json: expected a JSON object, got int"),
        (
            "dataset",
            "state.json",
            '{"_data_files": [{"name": "x.arrow"}]}',
            "cannot load: KeyError: 'filename'",
        ),
        ("dataset", "data-00000-of-00001.arrow", None, "cannot load: FileNotFoundError: "),
        ("dataset", "data-00000-of-00001.arrow", "garbage", "cannot load: ArrowInvalid: "),
        (
            "dict",
            "dataset_dict.json",
            '{"splits": ',
            "dataset_dict.json: invalid JSON: Expecting value (line 1, column 12)",
        ),
        (
            "dict",
            "dataset_dict.json",
            '{"split": ["train"]}',
            "dataset_dict.json: field 'splits' must be a list of split names",
        ),
        ("dict", "train/state.json", None, "train: cannot read state.json: No such file"),
    ],
)
def test_corrupt_saved_datasets_are_task_data_errors(tmp_path: Path, kind, name, text, problem):
    path = tmp_path / "saved"
    rows = datasets.Dataset.from_list(_chat_rows(2))
    (rows if kind == "dataset" else datasets.DatasetDict({"train": rows})).save_to_disk(str(path))
    _break(path, name, text)
    with pytest.raises(TaskDataError) as info:
        _task(path=str(path))
    message = str(info.value)
    assert message.startswith(f"dataset {path}") and problem in message
    assert "\n" not in message


def test_a_missing_split_whose_splits_cannot_be_listed_is_a_task_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def unreachable(*args: object, **kwargs: object) -> list[str]:
        raise ConnectionError("the hub cannot be reached\nretry later")

    monkeypatch.setattr(datasets, "get_dataset_split_names", unreachable)
    path = _json_file(tmp_path, _rows(2))
    with pytest.raises(TaskDataError) as info:
        _task(path="json", data_files=str(path), split="dev")
    assert str(info.value) == (
        "dataset json: no split 'dev' (task.dataset.split): Unknown split \"dev\". "
        "Should be one of ['train']."
    )


def test_heldout_share_without_an_answer_field_holds_out_any_rows(tmp_path: Path):
    rows = [{"prompt": f"p{i}"} for i in range(20)]
    task = _task(path=str(_saved(tmp_path, rows)), heldout_share=0.25)
    held = task.heldout_prompts()
    assert len(held) == 5 and all(p.answer is None for p in held)
    assert not set(held) & set(task.train_prompts(0, 15))


def test_dataset_task_needs_its_dataset():
    with pytest.raises(ValueError, match="task.dataset .* is required"):
        TaskConfig(name="dataset")
