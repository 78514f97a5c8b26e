"""The `verifier` judge: the task's own checker (exact answer), score 1.0 or 0.0."""

from __future__ import annotations

import time

from selfplay.config import JudgeConfig
from selfplay.judges.base import BaseJudge, JudgeEnv, JudgeItem, Verdict


class VerifierJudge(BaseJudge):
    """Checks each response with `task.verify`; a checker error becomes a failed verdict."""

    name = "verifier"

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        self.task = env.task

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """Score 1.0 when the task's checker accepts the response, else 0.0."""
        verdicts = []
        for item in items:
            start = time.perf_counter()
            try:
                correct, critique = self.task.verify(item.prompt, item.response)
            except Exception as err:  # a judge's failure is recorded, the loop goes on
                verdicts.append(Verdict.failure(f"{type(err).__name__}: {err}"))
                continue
            verdicts.append(
                Verdict(
                    status="ok",
                    score=1.0 if correct else 0.0,
                    critique=critique,
                    latency_s=time.perf_counter() - start,
                )
            )
        return verdicts
