"""An example third-party selfplay judge, installed as its own package.

`ConciseVerifier` scores a response with the task's verifier (1 correct, 0 wrong) minus
`length_penalty` per character, read from the config's free-form `judge.options`. It shows the
whole plug-in contract: a factory `(JudgeConfig, JudgeEnv) -> judge` registered under the
entry-point group `selfplay.judges`, a `name`, and `judge(items)` that returns one Verdict per
item and records failures instead of raising.
"""

from __future__ import annotations

from selfplay.config import JudgeConfig
from selfplay.judges import JudgeEnv, JudgeItem, Verdict


class ConciseVerifier:
    """The verifier's 0/1, minus a per-character length penalty."""

    name = "concise_verifier"

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        penalty = cfg.options.get("length_penalty", 0.01)
        if not isinstance(penalty, int | float) or penalty < 0:
            raise ValueError(f"judge.options.length_penalty must be a number >= 0, got {penalty!r}")
        self.task, self.penalty = env.task, float(penalty)

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """Score = correct − length_penalty · len(response); a checker error is a failure."""
        verdicts = []
        for item in items:
            try:
                correct, critique = self.task.verify(item.prompt, item.response)
            except Exception as err:
                verdicts.append(Verdict.failure(f"verifier raised {type(err).__name__}: {err}"))
                continue
            score = float(correct) - self.penalty * len(item.response)
            verdicts.append(
                Verdict(
                    status="ok",
                    score=score,
                    critique=f"{critique}; {len(item.response)} characters",
                    trace={"correct": correct, "length": len(item.response)},
                )
            )
        return verdicts
