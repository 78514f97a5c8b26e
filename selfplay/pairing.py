"""Pair builders: pure functions from a round's scored responses to preference pairs."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from db.queries import ScoredResponse


@dataclass(frozen=True)
class PairChoice:
    prompt_id: int
    chosen_id: int
    rejected_id: int
    chosen_score: float
    rejected_score: float

    @property
    def margin(self) -> float:
        """Score gap, chosen minus rejected."""
        return self.chosen_score - self.rejected_score


def max_min_pairs(
    scored: Sequence[ScoredResponse], max_pairs_per_prompt: int, seed: int
) -> list[PairChoice]:
    """Per prompt, pair the best with the worst, the second best with the second worst, ….

    At most `max_pairs_per_prompt` pairs per prompt, each response used at most once, and a
    pair only where the chosen score is strictly higher (ties dropped). Among equal scores the
    order is a seeded shuffle, so the result is deterministic for a seed.
    """
    by_prompt: dict[int, list[ScoredResponse]] = defaultdict(list)
    for s in scored:
        by_prompt[s.prompt_id].append(s)
    pairs: list[PairChoice] = []
    for prompt_id in sorted(by_prompt):
        candidates = sorted(by_prompt[prompt_id], key=lambda s: s.response_id)
        random.Random(f"{seed}:{prompt_id}").shuffle(candidates)
        best = sorted(candidates, key=lambda s: -s.score)  # stable: ties keep shuffled order
        worst = best[::-1]
        for i in range(min(max_pairs_per_prompt, len(best) // 2)):
            hi, lo = best[i], worst[i]
            if hi.score <= lo.score:
                break
            pairs.append(PairChoice(prompt_id, hi.response_id, lo.response_id, hi.score, lo.score))
    return pairs


PAIR_BUILDERS: dict[str, Callable[[Sequence[ScoredResponse], int, int], list[PairChoice]]] = {
    "max_min": max_min_pairs,
}
