import pytest

from selfplay.config import TaskConfig
from selfplay.tasks import TASKS, ArithmeticTask, JsonlTask, TaskDataError, make_task


def test_registry_names_match_the_config_literal():
    assert set(TASKS) == set(TaskConfig.model_fields["name"].annotation.__args__)


def test_make_task_builds_the_configured_task(tmp_path):
    task = make_task(TaskConfig(heldout_size=600), seed=3)
    assert isinstance(task, ArithmeticTask)
    assert task.heldout_prompts() == ArithmeticTask(3, 600).heldout_prompts()
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hi"}\n')
    assert isinstance(make_task(TaskConfig(name="jsonl", path=path), seed=0), JsonlTask)
    path.write_text("oops\n")
    with pytest.raises(TaskDataError, match="line 1"):
        make_task(TaskConfig(name="jsonl", path=path), seed=0)
