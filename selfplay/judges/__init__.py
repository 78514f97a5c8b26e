"""Judges by name. Later: tool, self, api, reward_model, ensemble, and third-party plug-ins."""

from __future__ import annotations

from collections.abc import Callable

from selfplay.config import JudgeConfig
from selfplay.judges.base import Judge, JudgeItem, Verdict
from selfplay.judges.verifier import VerifierJudge
from selfplay.tasks.base import Task

JUDGES: dict[str, Callable[[Task], Judge]] = {"verifier": VerifierJudge}


def make_judge(cfg: JudgeConfig, task: Task) -> Judge:
    """Build the configured judge for a task."""
    return JUDGES[cfg.name](task)


__all__ = ["JUDGES", "Judge", "JudgeItem", "Verdict", "make_judge"]
