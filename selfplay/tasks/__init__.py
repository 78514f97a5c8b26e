"""Tasks by name; `make_task` builds the configured one."""

from __future__ import annotations

from collections.abc import Callable

from selfplay.config import TaskConfig
from selfplay.tasks.arithmetic import ArithmeticTask
from selfplay.tasks.base import Prompt, Task
from selfplay.tasks.code import CodeTask
from selfplay.tasks.dataset import DatasetTask
from selfplay.tasks.jsonl import JsonlTask
from selfplay.tasks.records import TaskDataError

__all__ = [
    "TASKS",
    "ArithmeticTask",
    "CodeTask",
    "DatasetTask",
    "JsonlTask",
    "Prompt",
    "Task",
    "TaskDataError",
    "make_task",
]


def _arithmetic(cfg: TaskConfig, seed: int) -> Task:
    return ArithmeticTask(seed=seed, heldout_size=cfg.heldout_size)


def _code(cfg: TaskConfig, seed: int) -> Task:
    return CodeTask(seed=seed, heldout_size=cfg.heldout_size)


def _jsonl(cfg: TaskConfig, seed: int) -> Task:
    assert cfg.path is not None  # TaskConfig's validator requires it for jsonl
    return JsonlTask(cfg.path, seed=seed)


def _dataset(cfg: TaskConfig, seed: int) -> Task:
    assert cfg.dataset is not None  # TaskConfig's validator requires it for dataset
    return DatasetTask(cfg.dataset, seed=seed)


TASKS: dict[str, Callable[[TaskConfig, int], Task]] = {
    "arithmetic": _arithmetic,
    "code": _code,
    "jsonl": _jsonl,
    "dataset": _dataset,
}


def make_task(cfg: TaskConfig, seed: int) -> Task:
    """Build the task named by `cfg.name`; raises TaskDataError for unusable task data."""
    return TASKS[cfg.name](cfg, seed)
