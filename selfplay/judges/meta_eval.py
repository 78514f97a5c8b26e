"""Judge meta-evaluation: how far a judge agrees with the task's verifier, how position-biased
a pairwise judge is. Pure functions of a round's judgments; the judge stage stores the figures
as metrics of stage `judge_eval` and `selfplay status` shows them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
from typing import Any


@dataclass(frozen=True)
class Checked:
    """A judged response with the verifier's verdict on it."""

    prompt_id: int
    score: float
    correct: bool


def verifier_agreement(rows: Iterable[Checked]) -> tuple[float | None, int]:
    """(agreement, pairs): over every two responses to one prompt that the verifier tells
    apart (one correct, one not), the fraction the judge orders the same way (the correct one
    scores higher; a tie counts ½). Scale-free, so 0/1, 0–5 and logit judges compare alike;
    0.5 is chance. None when no prompt has both a correct and a wrong response."""
    by_prompt: dict[int, list[Checked]] = {}
    for r in rows:
        by_prompt.setdefault(r.prompt_id, []).append(r)
    agree, pairs = 0.0, 0
    for group in by_prompt.values():
        for a, b in combinations(group, 2):
            if a.correct == b.correct:
                continue
            good, bad = (a, b) if a.correct else (b, a)
            pairs += 1
            agree += 1.0 if good.score > bad.score else 0.5 if good.score == bad.score else 0.0
    return (agree / pairs if pairs else None), pairs


def position_bias_rate(traces: Iterable[dict[str, Any] | None]) -> tuple[float | None, int]:
    """(rate, comparisons): the fraction of both-order comparisons whose verdict flipped with
    the order (`position_flip` in the `comparisons` list of a pairwise judge's trace, as
    written by `symmetric_compare`); None when the judge made no comparisons."""
    flips = total = 0
    for trace in traces:
        for c in (trace or {}).get("comparisons", []):
            if isinstance(c, dict) and "position_flip" in c:
                total += 1
                flips += bool(c["position_flip"])
    return (flips / total if total else None), total


def judge_eval_metrics(
    status_counts: dict[str, int],
    checked: Iterable[Checked] | None,
    traces: Iterable[dict[str, Any] | None],
) -> dict[str, float]:
    """A round's judge meta-evaluation figures: `failed_rate` (the failed share of its
    judgments); with `checked` (a verifiable task, a judge other than the verifier)
    `verifier_agreement` and `agreement_pairs`; for a pairwise judge's `traces`,
    `position_bias_rate` and `comparisons`. A figure with nothing to measure is absent."""
    values: dict[str, float] = {}
    total = sum(status_counts.values())
    if total:
        values["failed_rate"] = status_counts.get("failed", 0) / total
    if checked is not None:
        agreement, n_pairs = verifier_agreement(checked)
        if agreement is not None:
            values |= {"verifier_agreement": agreement, "agreement_pairs": float(n_pairs)}
    bias, n_comparisons = position_bias_rate(traces)
    if bias is not None:
        values |= {"position_bias_rate": bias, "comparisons": float(n_comparisons)}
    return values
