"""Judges by name. Later: tool, self, api, reward_model, ensemble, and third-party plug-ins."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

from selfplay.config import JudgeConfig
from selfplay.judges.base import Judge, JudgeItem, Verdict
from selfplay.judges.verifier import VerifierJudge
from selfplay.tasks.base import Task

JUDGES: dict[str, Callable[[Task], Judge]] = {"verifier": VerifierJudge}


class NoisyJudge:
    """Label noise for robustness experiments: flips a fraction of a 0/1 judge's verdicts.

    Whether a verdict flips is a deterministic function of (seed, prompt, response), so a
    resumed run flips the same ones; score s becomes 1 − s. Failed verdicts pass unchanged.
    """

    def __init__(self, inner: Judge, flip_rate: float, seed: int) -> None:
        self.inner, self.flip_rate, self.seed = inner, flip_rate, seed
        self.name = inner.name

    def _flips(self, item: JudgeItem) -> bool:
        key = f"{self.seed}\0{item.prompt.text}\0{item.response}".encode()
        draw = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
        return draw < self.flip_rate

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """The inner judge's verdicts, a `flip_rate` fraction of them flipped."""
        verdicts = self.inner.judge(items)
        return [
            replace(
                v,
                score=1.0 - v.score,
                critique=f"{v.critique or ''} [label flipped: noise]".strip(),
            )
            if v.status == "ok" and v.score is not None and self._flips(item)
            else v
            for item, v in zip(items, verdicts, strict=True)
        ]


def make_judge(cfg: JudgeConfig, task: Task, seed: int = 0) -> Judge:
    """Build the configured judge for a task (wrapped in label noise if cfg.flip_rate > 0)."""
    judge = JUDGES[cfg.name](task)
    return NoisyJudge(judge, cfg.flip_rate, seed) if cfg.flip_rate > 0 else judge


__all__ = ["JUDGES", "Judge", "JudgeItem", "NoisyJudge", "Verdict", "make_judge"]
