"""The pair builders on hand-made judgment tables."""

from __future__ import annotations

import pytest

from db.queries import ScoredResponse
from selfplay.algorithms import BUILDERS
from selfplay.config import PairingConfig
from selfplay.pairing import (
    PAIR_BUILDERS,
    PairParams,
    dno_pairs,
    handle_truncated,
    inpo_pairs,
    is_degenerate,
    knockout,
    max_min_pairs,
    max_random_pairs,
    no_pairs_reason,
    replay_choice,
    self_rewarding_pairs,
    sppo_pairs,
    win_rates,
    xpo_pairs,
)


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
    pairs = max_min_pairs(scored, PairParams(max_pairs_per_prompt=2), seed=0)
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
    (first,) = max_min_pairs(scored, PairParams(max_pairs_per_prompt=1), seed=3)
    assert (first.chosen_id, first.rejected_id) == (1, 2)
    three = max_min_pairs(scored, PairParams(max_pairs_per_prompt=5), seed=3)
    # best vs worst, second vs second worst, third vs third worst
    assert [(p.chosen_id, p.rejected_id) for p in three] == [(1, 2), (5, 6), (3, 4)]


def test_deterministic_for_a_seed_and_registered():
    scored = table([(i, 1, float(i % 2)) for i in range(8)])
    assert max_min_pairs(scored, PairParams(2), seed=5) == max_min_pairs(
        scored, PairParams(2), seed=5
    )
    assert PAIR_BUILDERS["max_min"] is max_min_pairs


def rows(spec: list[tuple]) -> list[ScoredResponse]:
    """(response_id, prompt_id, score[, num_tokens[, sample_index[, text]]])."""
    out = []
    for r in spec:
        rid, pid, score, *rest = r
        tokens = rest[0] if rest else 4
        sample = rest[1] if len(rest) > 1 else 0
        text = rest[2] if len(rest) > 2 else ""
        out.append(ScoredResponse(rid, pid, score, tokens, sample, text))
    return out


def test_length_penalised_max_min_prefers_the_short_answer():
    # Both correct answers score 1; with λ = 0.1 the 2-token one (0.8) outranks the 6-token
    # one (0.4), and the wrong 2-token answer (−0.2) is the worst.
    scored = rows([(1, 1, 1.0, 6), (2, 1, 1.0, 2), (3, 1, 0.0, 2), (4, 1, 0.0, 9)])
    (pair,) = max_min_pairs(scored, PairParams(max_pairs_per_prompt=1, length_penalty=0.1), 0)
    assert (pair.chosen_id, pair.rejected_id) == (2, 4)  # 0.8 vs −0.9
    assert pair.margin == 1.0  # stored scores stay the judge's


def test_max_random_best_against_a_random_worse():
    scored = rows([(1, 1, 0.9), (2, 1, 0.5), (3, 1, 0.1), (4, 1, 0.9)])
    pairs = max_random_pairs(scored, PairParams(max_pairs_per_prompt=2), seed=0)
    assert len(pairs) == 2
    assert {p.chosen_id for p in pairs} <= {1, 4} and len({p.chosen_id for p in pairs}) == 1
    assert {p.rejected_id for p in pairs} == {2, 3}  # never the other 0.9


def test_self_rewarding_highest_vs_lowest_ties_dropped():
    scored = rows([(1, 1, 4.0), (2, 1, 2.5), (3, 1, 4.5), (4, 1, 1.0), (5, 2, 3.0), (6, 2, 3.0)])
    (pair,) = self_rewarding_pairs(scored, PairParams(), seed=0)
    assert (pair.chosen_id, pair.rejected_id, pair.margin) == (3, 4, 3.5)


def test_win_rates_dno_and_sppo_conventions():
    # Scores 1, 0 with T = 1: σ(1) = 0.731058579, σ(−1) = 0.268941421.
    r = win_rates([1.0, 0.0], 1.0, include_self=False)
    assert [round(x, 6) for x in r] == [0.731059, 0.268941]
    # SPPO includes j = i (½): (0.731058579 + 0.5)/2 = 0.615529290 ; (0.268941421 + 0.5)/2
    p = win_rates([1.0, 0.0], 1.0, include_self=True)
    assert [round(x, 6) for x in p] == [0.615529, 0.384471]


def test_dno_large_margin_pairs_threshold_and_degenerate_negatives():
    # Prompt 1, T = 0.1 (nearly hard wins): scores 1, 1, 0, 0.
    #   r(correct) = (½ + 2·σ(10))/3 = (0.5 + 2·0.9999546)/3 = 0.8333031
    #   r(wrong)   = (2·σ(−10) + ½)/3 = 0.1666969 ; gap 0.6666 ≥ 0.5 → 4 candidate pairs, cap 3.
    # Response 2 is degenerate ("7777" repeats "77"): r = 0, never a positive.
    scored = rows(
        [
            (1, 1, 1.0, 2, 0, "12"),
            (2, 1, 1.0, 4, 1, "7777"),
            (3, 1, 0.0, 2, 2, "13"),
            (4, 1, 0.0, 2, 3, "14"),
            # Prompt 2: the best scores 0.4 < the positive threshold 0.5 → no pair.
            (5, 2, 0.4, 2, 0, "a"),
            (6, 2, 0.0, 2, 1, "b"),
        ]
    )
    params = PairParams(
        max_pairs_per_prompt=3,
        bt_temperature=0.1,
        dno_margin=0.5,
        dno_min_positive_score=0.5,
        degenerate_ngram=2,
    )
    pairs = dno_pairs(scored, params, seed=0)
    assert {p.prompt_id for p in pairs} == {1}
    assert all(p.chosen_id == 1 for p in pairs)
    # The degenerate response is the largest-gap negative (0.833 − 0), then the wrong ones.
    assert pairs[0].rejected_id == 2 and {p.rejected_id for p in pairs} == {2, 3, 4}
    assert abs(pairs[0].chosen_score - 0.8333031) < 1e-6 and pairs[0].rejected_score == 0.0
    # Without the degenerate rule, 2 is a positive too.
    plain = dno_pairs(scored, PairParams(4, bt_temperature=0.1, dno_margin=0.5), seed=0)
    assert {p.chosen_id for p in plain} == {1, 2, 5}


def test_is_degenerate():
    assert is_degenerate("abcabc", 3) and not is_degenerate("abcdef", 3)
    assert not is_degenerate("aaaa", 0)


def test_inpo_argmax_argmin_first_wins_ties():
    scored = rows([(5, 1, 1.0), (2, 1, 1.0), (9, 1, 0.0), (3, 1, 0.0), (7, 2, 1.0), (8, 2, 1.0)])
    (pair,) = inpo_pairs(scored, PairParams(), seed=0)
    assert (pair.chosen_id, pair.rejected_id) == (2, 3)  # lowest ids among the tied


def test_knockout_tournament():
    # Candidates 0..7 with a hidden strength; a beats b iff strength[a] > strength[b].
    strength = [3, 7, 1, 5, 0, 6, 2, 4]

    def prefer(a: int, b: int) -> float:
        return 1.0 if strength[a] > strength[b] else 0.0

    # Round 1: (0,1)→1 beats 0, (2,3)→3, (4,5)→5, (6,7)→7. Winners: 1, 3, 5, 7 → 1 (7).
    # Losers 0, 2, 4, 6 (strengths 3, 1, 0, 2): losers' bracket keeps the loser → 4.
    assert knockout(list(range(8)), prefer) == (1, 4)
    # All tied: ties go to the first, the final check (prefer > ½) fails → no pair.
    assert knockout([0, 1, 2, 3], lambda a, b: 0.5) is None
    assert knockout([0], prefer) is None


def test_sppo_max_min_of_phat_with_targets():
    scored = rows([(1, 1, 1.0), (2, 1, 0.0), (3, 1, 0.0), (4, 2, 0.0), (5, 2, 0.0)])
    pairs = sppo_pairs(scored, PairParams(bt_temperature=1.0), seed=0)
    by_prompt = {p.prompt_id: p for p in pairs}
    # Prompt 1: P̂_1 = (½ + 2σ(1))/3 = 0.654039, P̂_2 = P̂_3 = (σ(−1) + ½ + ½)/3 = 0.422980
    p1 = by_prompt[1]
    assert (p1.chosen_id, p1.rejected_id) == (1, 2)
    assert round(p1.chosen_target, 6) == 0.654039 and round(p1.rejected_target, 6) == 0.42298
    # Prompt 2: all equal → targets ½, ½ (kept: the loss then holds the policy at π_t).
    assert by_prompt[2].chosen_target == 0.5 == by_prompt[2].rejected_target


def test_xpo_pairs_a_policy_sample_with_a_reference_sample():
    # K = 2 policy samples (indices 0, 1), reference samples 2, 3.
    scored = rows([(1, 1, 1.0, 4, 0), (2, 1, 0.0, 4, 1), (3, 1, 0.0, 4, 2), (4, 1, 0.0, 4, 3)])
    pairs = xpo_pairs(scored, PairParams(max_pairs_per_prompt=2, policy_samples=2), seed=0)
    for p in pairs:
        ids = {p.chosen_id, p.rejected_id}
        assert len(ids & {1, 2}) == 1 and len(ids & {3, 4}) == 1
    # The only unequal matching is 1 (correct) vs a reference sample; ties are dropped.
    assert all(p.chosen_id == 1 for p in pairs) and len(pairs) <= 1


def test_replay_choice_fractions():
    earlier = [list(range(100, 110)), list(range(200, 204))]
    chosen = replay_choice(earlier, [0.3, 0.15], current=20, seed=1)
    # 0.3·20 = 6 from t−1; 0.15·20 = 3 from t−2 (it has 4).
    assert len([c for c in chosen if c < 200]) == 6 and len([c for c in chosen if c >= 200]) == 3
    assert replay_choice(earlier, [0.3, 0.15], 20, 1) == chosen
    assert replay_choice(earlier, [1.0, 1.0], current=100, seed=0).count(200) == 1


def test_every_registered_builder_has_a_function():
    assert list(PAIR_BUILDERS) == list(BUILDERS)


def _cut(rows: list[tuple[int, int, float, bool]]) -> list[ScoredResponse]:
    """(response id, prompt id, score, truncated) rows."""
    return [
        ScoredResponse(rid, pid, score, 4, finish_reason="length" if cut else "stop")
        for rid, pid, score, cut in rows
    ]


TRUNCATED_ROUND = _cut([(1, 1, 0.9, True), (2, 1, 0.5, False), (3, 1, 0.1, False)])


def test_truncated_responses_are_dropped_penalized_or_kept():
    assert PairingConfig().truncated == "drop"  # the default
    p = PairParams(max_pairs_per_prompt=1)
    dropped = max_min_pairs(handle_truncated(TRUNCATED_ROUND, "drop", 1.0), p, seed=0)
    assert [(c.chosen_id, c.rejected_id) for c in dropped] == [(2, 3)]
    # TRL's missing_eos_penalty: the truncated 0.9 becomes -0.1, the worst of the prompt.
    penalized = max_min_pairs(handle_truncated(TRUNCATED_ROUND, "penalize", 1.0), p, seed=0)
    assert [(c.chosen_id, c.rejected_id) for c in penalized] == [(2, 1)]
    assert penalized[0].rejected_score == pytest.approx(-0.1)
    kept = max_min_pairs(handle_truncated(TRUNCATED_ROUND, "keep", 1.0), p, seed=0)
    assert [(c.chosen_id, c.rejected_id, c.rejected_score) for c in kept] == [(1, 3, 0.1)]


def test_no_pairs_reason_names_what_stopped_the_builder():
    p = PairParams(dno_margin=0.25, bt_temperature=1.0)
    everything_cut = _cut([(i, i // 4, 1.0, True) for i in range(64)])
    left = handle_truncated(everything_cut, "drop", 1.0)
    assert no_pairs_reason("max_min", everything_cut, left, p, "drop") == (
        "0 pairs: all 64 judged responses truncated (pairing.truncated: drop)"
    )
    # Raw reward-model logits a few hundredths apart: σ(Δ/T) ≈ ½ for every pair at T = 1.
    close = table([(1, 1, 0.01), (2, 1, 0.03), (3, 1, 0.06), (4, 2, 0.2), (5, 2, 0.21)])
    assert dno_pairs(close, p, seed=0) == []
    assert no_pairs_reason("dno", close, close, p, "drop") == (
        "0 pairs: every win-rate gap below dno_margin 0.25 (largest 0.019 at bt_temperature 1)"
    )
    ties = table([(1, 1, 1.0), (2, 1, 1.0), (3, 2, 0.0), (4, 2, 0.0)])
    assert no_pairs_reason("max_min", ties, ties, p, "keep") == (
        "0 pairs: every prompt's responses scored equal"
    )
    single = _cut([(1, 1, 1.0, False), (2, 1, 0.0, True), (3, 2, 0.5, False)])
    assert no_pairs_reason("max_min", single, handle_truncated(single, "drop", 1), p, "drop") == (
        "0 pairs: no prompt has two judged responses (1 truncated dropped)"
    )
    assert no_pairs_reason("max_min", [], [], p, "drop") == (
        "0 pairs: no response has a successful judgment"
    )
