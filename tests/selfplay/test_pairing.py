"""The max-min pair builder on hand-made judgment tables."""

from __future__ import annotations

from db.queries import ScoredResponse
from selfplay.pairing import PAIR_BUILDERS, max_min_pairs


def table(rows: list[tuple[int, int, float]]) -> list[ScoredResponse]:
    return [ScoredResponse(rid, pid, score, 4) for rid, pid, score in rows]


def test_pairs_correct_against_wrong_and_drops_ties():
    scored = table(
        [
            # prompt 1: two correct (10, 11), two wrong (12, 13)
            (10, 1, 1.0),
            (11, 1, 1.0),
            (12, 1, 0.0),
            (13, 1, 0.0),
            # prompt 2: all correct -> no pair
            (20, 2, 1.0),
            (21, 2, 1.0),
            # prompt 3: one correct, three wrong -> only one pair (each response used once)
            (30, 3, 1.0),
            (31, 3, 0.0),
            (32, 3, 0.0),
            (33, 3, 0.0),
        ]
    )
    pairs = max_min_pairs(scored, max_pairs_per_prompt=2, seed=0)
    by_prompt = {}
    for p in pairs:
        by_prompt.setdefault(p.prompt_id, []).append(p)
    assert set(by_prompt) == {1, 3}
    assert len(by_prompt[1]) == 2 and len(by_prompt[3]) == 1
    assert {p.chosen_id for p in by_prompt[1]} == {10, 11}
    assert {p.rejected_id for p in by_prompt[1]} == {12, 13}
    assert by_prompt[3][0].chosen_id == 30 and by_prompt[3][0].margin == 1.0


def test_max_pairs_per_prompt_and_graded_scores():
    scored = table([(1, 7, 0.9), (2, 7, 0.1), (3, 7, 0.5), (4, 7, 0.4), (5, 7, 0.7), (6, 7, 0.2)])
    (first,) = max_min_pairs(scored, max_pairs_per_prompt=1, seed=3)
    assert (first.chosen_id, first.rejected_id) == (1, 2)
    three = max_min_pairs(scored, max_pairs_per_prompt=5, seed=3)
    # best vs worst, second vs second worst, third vs third worst
    assert [(p.chosen_id, p.rejected_id) for p in three] == [(1, 2), (5, 6), (3, 4)]


def test_deterministic_for_a_seed_and_registered():
    scored = table([(i, 1, float(i % 2)) for i in range(8)])
    assert max_min_pairs(scored, 2, seed=5) == max_min_pairs(scored, 2, seed=5)
    assert PAIR_BUILDERS["max_min"] is max_min_pairs
