"""The `self` judge: the policy itself as LLM-as-a-judge (Self-Rewarding, Yuan et al. 2024).

The policy reads the additive 5-point prompt (one point per criterion met, 0–5 in all) and
writes its verdict, which must end with "Score: <points>". Each judgment samples once; the
loop's `judge.repeats` asks N times (a different seed per repeat) and the pair builders use
the mean. An answer with no parseable score is a failed judgment that keeps the raw text.

The filled-in prompt is one user turn: a policy with a chat template reads it rendered as chat
(selfplay.rendering), one without reads the plain text. A conversation being judged is shown
in `{prompt}` as a transcript of its turns (`request_text`, as the api judge shows it).
"""

from __future__ import annotations

import re
import time

from selfplay.config import JudgeConfig
from selfplay.generation.base import SamplingParams
from selfplay.judges.api import request_text
from selfplay.judges.base import BaseJudge, JudgeEnv, JudgeItem, Policy, Verdict
from selfplay.tasks.base import Prompt

# The additive rubric of Self-Rewarding LMs (2401.10020, Fig. 2), shortened so that it fits a
# small context with the question and the answer.
ADDITIVE_PROMPT = """Review the user's question and the response using the additive 5-point \
scoring system below. Points accumulate for each criterion met:
- Add 1 point if the response is relevant and provides some information related to the question.
- Add another point if it addresses a substantial portion of the question.
- Add a third point if it answers the basic elements of the question usefully.
- Add a fourth point if it is clearly written from an AI Assistant's perspective, directly \
addresses the question and is well-organized and helpful.
- Award a fifth point if it is impeccably tailored to the question, without extraneous \
information, reflecting expert knowledge.

Question: {prompt}
Response: {response}

Justify your total briefly, then conclude with "Score: <total points>".
"""

# "Score: 4", "score = 4.5", "Score: 3/5", "**Score:** 2"; the last one in the text wins.
_SCORE = re.compile(r"score\W{0,4}?\s*[:=]?\s*\**\s*([0-5](?:\.\d+)?)\s*(?:/\s*5)?", re.IGNORECASE)
_BARE = re.compile(r"^\s*([0-5](?:\.\d+)?)\s*(?:/\s*5)?\s*\.?\s*$")


def parse_score(text: str) -> float | None:
    """The 0–5 score in a judge's answer: the last "Score: x" (x/5 allowed), or an answer that
    is only a number; None when there is none or it lies outside [0, 5]."""
    matches = _SCORE.findall(text)
    raw = matches[-1] if matches else None
    if raw is None:
        bare = _BARE.match(text)
        raw = bare.group(1) if bare else None
    if raw is None:
        return None
    value = float(raw)
    return value if 0.0 <= value <= 5.0 else None


def fill_template(template: str, prompt: str, response: str) -> str:
    """The template with {prompt} and {response} filled in one pass (other braces are kept,
    and braces inside the texts are never read as fields)."""
    values = {"{prompt}": prompt, "{response}": response}
    return re.sub(r"\{prompt\}|\{response\}", lambda m: values[m.group(0)], template)


class SelfJudge(BaseJudge):
    """Asks the round's policy to grade each response (0–5, additive rubric)."""

    name = "self"
    needs_policy = True

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        self.cfg, self.seed = cfg.self_judge, env.seed
        self.template = cfg.self_judge.prompt_template or ADDITIVE_PROMPT

    def judge(self, items: list[JudgeItem], policy: Policy) -> list[Verdict]:
        """One sampled verdict per item from `policy`; a policy that cannot generate fails
        every item."""
        if not items:
            return []
        prompts = [
            Prompt(fill_template(self.template, request_text(i.prompt), i.response)) for i in items
        ]
        repeat = int(items[0].extra.get("repeat", 0))
        params = SamplingParams(
            n=1,
            temperature=self.cfg.temperature,
            max_new_tokens=self.cfg.max_new_tokens,
            seed=self.seed * 1000 + repeat,
        )
        start = time.perf_counter()
        try:
            outputs = policy.generate(prompts, params)
        except Exception as err:  # recorded, never raised
            return [Verdict.failure(f"policy failed to judge: {type(err).__name__}: {err}")] * len(
                items
            )
        latency = (time.perf_counter() - start) / len(items)
        verdicts = []
        for (sample,) in outputs:
            score = parse_score(sample.text)
            trace = {"judge_output": sample.text, "checkpoint": policy.path}
            if score is None:
                verdicts.append(
                    Verdict.failure(
                        "no 'Score: <0-5>' in the policy's answer",
                        trace=trace,
                        latency_s=latency,
                        tokens=len(sample.token_ids),
                    )
                )
                continue
            verdicts.append(
                Verdict(
                    status="ok",
                    score=score,
                    critique=sample.text.strip(),
                    trace=trace,
                    latency_s=latency,
                    tokens=len(sample.token_ids),
                )
            )
        return verdicts
