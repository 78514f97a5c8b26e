"""User errors under `selfplay run` exit 2 with one line naming the field or file:line, before
anything is written; what the run creates is readable by its owner only."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text
from typer.testing import CliRunner

from db.engine import transaction
from selfplay.cli import app
from selfplay.driver import create_store

runner = CliRunner()


def _run(tmp_path: Path, config: dict) -> tuple[int, str]:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["run", str(path), "--rounds", "1"], env={"COLUMNS": "300"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error")]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def test_a_broken_prompts_file_exits_2_naming_the_line_and_writes_nothing(tmp_path: Path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": \n')
    store = tmp_path / "out" / "selfplay.db"
    code, output = _run(
        tmp_path,
        {
            "run": {"output_dir": str(tmp_path / "out")},
            "task": {"name": "jsonl", "path": str(prompts)},
            "store": {"url": f"sqlite:///{store}"},
        },
    )
    assert code == 2
    assert f"{prompts}, line 2: invalid JSON" in _error_line(output)
    assert not store.exists()  # no run row: fixing the file then runs, not "a changed config"


def test_an_output_dir_under_a_regular_file_exits_2_naming_the_field(tmp_path: Path):
    (tmp_path / "file").write_text("not a directory")
    code, output = _run(tmp_path, {"run": {"output_dir": str(tmp_path / "file" / "out")}})
    assert code == 2
    line = _error_line(output)
    assert "run.output_dir: cannot create" in line and "Not a directory" in line


def test_a_store_under_a_regular_file_exits_2_naming_the_field(tmp_path: Path):
    (tmp_path / "file").write_text("not a directory")
    code, output = _run(
        tmp_path,
        {
            "run": {"output_dir": str(tmp_path / "out")},
            "store": {"url": f"sqlite:///{tmp_path / 'file' / 'selfplay.db'}"},
        },
    )
    assert code == 2
    line = _error_line(output)
    assert f"store.url: cannot create the store {tmp_path / 'file' / 'selfplay.db'}" in line
    assert "File exists" in line  # the regular file is where its directory should be


def test_the_store_and_its_wal_are_readable_by_the_owner_only(tmp_path: Path):
    from sqlalchemy.orm import sessionmaker

    path = tmp_path / "new" / "selfplay.db"
    engine = create_store(f"sqlite:///{path}")
    with transaction(sessionmaker(engine)) as s:
        s.execute(text("CREATE TABLE canary (x INTEGER)"))
        s.execute(text("INSERT INTO canary VALUES (1)"))
        wal = path.with_name(path.name + "-wal")
        shm = path.with_name(path.name + "-shm")
        assert wal.exists() and shm.exists()
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (path, wal, shm)}
    engine.dispose()
    assert set(modes.values()) == {0o600}, modes
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("existing", [False, True])
def test_the_output_dir_is_created_private(tmp_path: Path, existing: bool):
    from selfplay.driver import _create_private_dir

    out = tmp_path / "runs" / "x"
    if existing:
        out.mkdir(parents=True, mode=0o755)
    _create_private_dir(out, "run.output_dir")
    # A new directory is private; an existing one is the user's choice and is kept.
    assert stat.S_IMODE(out.stat().st_mode) == (0o755 if existing else 0o700)


def test_a_judge_factory_that_raises_exits_2_before_the_run_is_written(
    tmp_path: Path, exploding_judge: str
):
    store = tmp_path / "out" / "selfplay.db"
    code, output = _run(
        tmp_path,
        {
            "run": {"output_dir": str(tmp_path / "out")},
            "judge": {"name": exploding_judge},
            "store": {"url": f"sqlite:///{store}"},
        },
    )
    assert code == 2
    assert _error_line(output) == (
        "error: judge.name: the factory of judge 'exploding_judge:Exploding' raised "
        "RuntimeError: cannot reach my model"
    )
    engine = create_store(f"sqlite:///{store}")
    with engine.connect() as conn:  # no run row: fixing the judge is not a changed config
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 0
    engine.dispose()


def _task_error(tmp_path: Path, task: dict) -> str:
    """The one error line of `selfplay run` on this task section; asserts exit 2, no run row."""
    store = tmp_path / "out" / "selfplay.db"
    code, output = _run(
        tmp_path,
        {
            "run": {"output_dir": str(tmp_path / "out")},
            "task": task,
            "store": {"url": f"sqlite:///{store}"},
        },
    )
    assert code == 2, output
    assert not store.exists()  # no run row: fixing the data then runs, not "a changed config"
    return _error_line(output)


def test_prompts_without_answers_for_the_tiny_models_sft_exit_2_before_the_run(tmp_path: Path):
    prompts = tmp_path / "open.jsonl"
    prompts.write_text(
        '{"prompt": "Tell me a story."}\n{"prompt": "And another.", "split": "heldout"}\n'
    )
    line = _task_error(tmp_path, {"name": "jsonl", "path": str(prompts)})
    assert line.startswith("error: model.sft.steps: the tiny model needs SFT data")


def test_a_malformed_chat_message_exits_2_naming_the_line(tmp_path: Path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": [{"role": "user", "content": "fine"}]}\n'
        '{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}\n'
    )
    line = _task_error(tmp_path, {"name": "jsonl", "path": str(prompts)})
    assert line == (
        f"error: {prompts}, line 2: messages[1].role must be one of system, user, assistant, "
        "got 'bot'"
    )


def test_an_empty_dataset_exits_2(tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    empty = tmp_path / "empty"
    datasets.Dataset.from_dict({"prompt": []}).save_to_disk(str(empty))
    line = _task_error(tmp_path, {"name": "dataset", "dataset": {"path": str(empty)}})
    assert line == f"error: dataset {empty}: no rows"


def test_a_dataset_row_without_a_usable_prompt_exits_2_naming_the_row(tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"prompt": "fine"}, {"prompt": None}]).save_to_disk(str(saved))
    line = _task_error(tmp_path, {"name": "dataset", "dataset": {"path": str(saved)}})
    assert line == f"error: dataset {saved} (split train), row 1: field 'prompt' is null"


def test_a_directory_that_is_no_dataset_exits_2(tmp_path: Path):
    (tmp_path / "nothing").mkdir()
    line = _task_error(
        tmp_path, {"name": "dataset", "dataset": {"path": str(tmp_path / "nothing")}}
    )
    assert line.startswith(f"error: dataset {tmp_path / 'nothing'}: a directory that is no dataset")


def test_a_saved_dataset_with_a_corrupt_state_json_exits_2_naming_it(tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"prompt": "fine"}]).save_to_disk(str(saved))
    (saved / "state.json").write_text("{")
    line = _task_error(tmp_path, {"name": "dataset", "dataset": {"path": str(saved)}})
    assert line == (
        f"error: dataset {saved}: state.json: invalid JSON: Expecting property name enclosed "
        "in double quotes (line 1, column 2)"
    )


def test_a_conversation_beyond_round_0s_prompts_exits_2_before_the_run(tmp_path: Path):
    from selfplay.config import parse_config
    from selfplay.tasks import JsonlTask

    prompts = tmp_path / "prompts.jsonl"
    chat = '{"prompt": [{"role": "user", "content": "Hello!"}], "answer": "Hi"}\n'
    lines = [f'{{"prompt": "Q:{i}+1=", "answer": {i + 1}}}\n' for i in range(20)]
    prompts.write_text("".join(lines) + chat)
    task = {"name": "jsonl", "path": str(prompts), "prompts_per_round": 2}
    seed = parse_config({"task": task}).run.seed
    # Neither the held-out set (none) nor round 0's window holds the conversation.
    assert all(p.messages is None for p in JsonlTask(prompts, seed).train_prompts(0, 2))
    line = _task_error(tmp_path, task)
    assert line.startswith("error: model.chat_template: a prompt is a conversation")
    assert "(the tiny model) has no chat template" in line


def test_more_ranks_than_gpus_exit_before_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The embedded driver launches the ranks itself: a node with fewer GPUs than ranks is a
    # config error at startup, not a failed round 0.
    import torch

    from selfplay.config import ConfigError, parse_config
    from selfplay.driver import run_loop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    store = tmp_path / "selfplay.db"
    cfg = parse_config(
        {
            "run": {"output_dir": str(tmp_path / "out")},
            "store": {"url": f"sqlite:///{store}"},
            "training": {"distributed": {"strategy": "fsdp", "nproc": 2}},
        }
    )
    with pytest.raises(ConfigError, match=r"^training.distributed.nproc is 2 but this node has 1"):
        run_loop(cfg)
    assert not store.exists()
