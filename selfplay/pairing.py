"""Pair builders: pure functions from a round's scored responses to preference pairs.

Every builder has the signature `(scored, params, seed) -> list[PairChoice]` and is mapped by
name in `PAIR_BUILDERS`; what its pairs carry is in the torch-free registry
`selfplay.algorithms.BUILDERS`. `scored` holds one row per successfully judged response (scores
averaged over judge repeats); `params` carries every builder's knobs; `seed` makes tie-breaking
deterministic. Builders never touch the store: stages.pair_round reads the table and writes the
pairs. ALGORITHMS.md gives the math of each.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from db.queries import ScoredResponse


@dataclass(frozen=True)
class PairChoice:
    prompt_id: int
    chosen_id: int
    rejected_id: int
    chosen_score: float
    rejected_score: float
    chosen_target: float | None = None  # SPPO's P̂ of the chosen response
    rejected_target: float | None = None

    @property
    def margin(self) -> float:
        """Score gap, chosen minus rejected."""
        return self.chosen_score - self.rejected_score


@dataclass(frozen=True)
class PairParams:
    """Knobs of every builder; each builder reads only its own.

    - max_pairs_per_prompt: cap per prompt (all builders).
    - length_penalty: λ of the length-penalised selection score r − λ·|y| (tokens); 0 = off.
    - bt_temperature: T of the Bradley–Terry win probability σ((s_i − s_j)/T) (dno, sppo).
    - dno_margin: minimum win-rate gap r(y⁺) − r(y⁻) of a DNO pair.
    - dno_min_positive_score: a DNO positive must score at least this (good in absolute terms).
    - degenerate_ngram: a response repeating an n-gram of this many tokens (characters of the
      text) is degenerate: an automatic DNO negative. 0 = off.
    - policy_samples: K, the number of policy samples per prompt; sample indices ≥ K are the
      reference samples that XPO pairs against.
    """

    max_pairs_per_prompt: int = 1
    length_penalty: float = 0.0
    bt_temperature: float = 1.0
    dno_margin: float = 0.25
    dno_min_positive_score: float | None = None
    degenerate_ngram: int = 0
    policy_samples: int = 1


def _by_prompt(scored: Sequence[ScoredResponse], seed: int) -> dict[int, list[ScoredResponse]]:
    """Group by prompt; within a prompt, a seeded shuffle of response-id order (tie-breaking)."""
    groups: dict[int, list[ScoredResponse]] = defaultdict(list)
    for s in scored:
        groups[s.prompt_id].append(s)
    out = {}
    for prompt_id in sorted(groups):
        candidates = sorted(groups[prompt_id], key=lambda s: s.response_id)
        random.Random(f"{seed}:{prompt_id}").shuffle(candidates)
        out[prompt_id] = candidates
    return out


def _selection_score(s: ScoredResponse, p: PairParams) -> float:
    return s.score - p.length_penalty * s.num_tokens


def _choice(hi: ScoredResponse, lo: ScoredResponse, **targets: float) -> PairChoice:
    return PairChoice(hi.prompt_id, hi.response_id, lo.response_id, hi.score, lo.score, **targets)


def max_min_pairs(scored: Sequence[ScoredResponse], p: PairParams, seed: int) -> list[PairChoice]:
    """Per prompt, pair the best with the worst, the second best with the second worst, ….

    Ranked by the selection score (score − λ·length, RLHFlow's length-penalised max_min when
    λ > 0). At most `max_pairs_per_prompt` pairs per prompt, each response used at most once,
    and a pair only where the chosen one ranks strictly higher (ties dropped). Among equal
    scores the order is a seeded shuffle, so the result is deterministic for a seed.
    """
    pairs: list[PairChoice] = []
    for candidates in _by_prompt(scored, seed).values():
        best = sorted(candidates, key=lambda s: -_selection_score(s, p))  # stable on ties
        worst = best[::-1]
        for i in range(min(p.max_pairs_per_prompt, len(best) // 2)):
            hi, lo = best[i], worst[i]
            if _selection_score(hi, p) <= _selection_score(lo, p):
                break
            pairs.append(_choice(hi, lo))
    return pairs


def max_random_pairs(
    scored: Sequence[ScoredResponse], p: PairParams, seed: int
) -> list[PairChoice]:
    """Per prompt, the best response against a random strictly worse one (RLHFlow max_random).

    With `max_pairs_per_prompt` > 1, further pairs take the best against other random worse
    responses, each rejected response used once.
    """
    pairs: list[PairChoice] = []
    for prompt_id, candidates in _by_prompt(scored, seed).items():
        best = max(candidates, key=lambda s: _selection_score(s, p))
        worse = [c for c in candidates if _selection_score(c, p) < _selection_score(best, p)]
        random.Random(f"{seed}:{prompt_id}:random").shuffle(worse)
        pairs += [_choice(best, lo) for lo in worse[: p.max_pairs_per_prompt]]
    return pairs


def self_rewarding_pairs(
    scored: Sequence[ScoredResponse], p: PairParams, seed: int
) -> list[PairChoice]:
    """Self-Rewarding (2401.10020): per prompt, (highest, lowest) mean score, ties dropped;
    among equal scores the seeded order decides."""
    return _highest_vs_lowest(_by_prompt(scored, seed).values())


def _highest_vs_lowest(groups: Iterable[list[ScoredResponse]]) -> list[PairChoice]:
    """Per group, (first highest, first lowest) in the group's order; equal scores: no pair."""
    pairs: list[PairChoice] = []
    for candidates in groups:
        hi = max(candidates, key=lambda s: s.score)  # max/min return the first of equals
        lo = min(candidates, key=lambda s: s.score)
        if hi.score > lo.score:
            pairs.append(_choice(hi, lo))
    return pairs


def bt_probability(s_i: float, s_j: float, temperature: float) -> float:
    """Bradley–Terry P(i ≻ j) = σ((s_i − s_j)/T)."""
    return 1.0 / (1.0 + math.exp(-(s_i - s_j) / temperature))


def win_rates(scores: Sequence[float], temperature: float, include_self: bool) -> list[float]:
    """Each candidate's mean win probability against the others (DNO's r) or against all K
    including itself, which adds ½ (SPPO's P̂)."""
    k = len(scores)
    out = []
    for i, s_i in enumerate(scores):
        wins = [bt_probability(s_i, s_j, temperature) for j, s_j in enumerate(scores) if j != i]
        if include_self:
            out.append((sum(wins) + 0.5) / k)
        else:
            out.append(sum(wins) / max(k - 1, 1))
    return out


def is_degenerate(text: str, n: int) -> bool:
    """True when some n-gram (of characters) occurs more than once in `text`, i.e. a repeat."""
    if n <= 0 or len(text) < 2 * n:
        return False
    seen: set[str] = set()
    for i in range(len(text) - n + 1):
        gram = text[i : i + n]
        if gram in seen:
            return True
        seen.add(gram)
    return False


def dno_pairs(scored: Sequence[ScoredResponse], p: PairParams, seed: int) -> list[PairChoice]:
    """DNO-Prct large-margin pairs over win rates (2404.03715, Alg. 2 step 4).

    r(y) = mean over the prompt's other candidates of σ((s_y − s_y')/T). Degenerate responses
    (a repeated n-gram, `degenerate_ngram` > 0) get r = 0: automatic negatives, never
    positives. Every (y⁺, y⁻) with r(y⁺) − r(y⁻) ≥ `dno_margin` whose positive scores at least
    `dno_min_positive_score` is a candidate pair; the largest gaps are kept, at most
    `max_pairs_per_prompt` per prompt. The pair's scores are the win rates.
    """
    pairs: list[PairChoice] = []
    for candidates in _by_prompt(scored, seed).values():
        rates = win_rates([c.score for c in candidates], p.bt_temperature, include_self=False)
        degenerate = [is_degenerate(c.text, p.degenerate_ngram) for c in candidates]
        rates = [0.0 if d else r for r, d in zip(rates, degenerate, strict=True)]
        options = []
        for i, pos in enumerate(candidates):
            if degenerate[i]:
                continue
            if p.dno_min_positive_score is not None and pos.score < p.dno_min_positive_score:
                continue
            for j in range(len(candidates)):
                gap = rates[i] - rates[j]
                if i != j and gap >= p.dno_margin and gap > 0:
                    options.append((gap, i, j))
        options.sort(key=lambda o: -o[0])  # stable: the seeded shuffle breaks ties
        for _, i, j in options[: p.max_pairs_per_prompt]:
            pos, neg = candidates[i], candidates[j]
            pairs.append(
                PairChoice(pos.prompt_id, pos.response_id, neg.response_id, rates[i], rates[j])
            )
    return pairs


def inpo_pairs(scored: Sequence[ScoredResponse], p: PairParams, seed: int) -> list[PairChoice]:
    """INPO with a scalar judge (2407.00617): y_w = argmax, y_l = argmin; equal scores: none.

    Ties for the max or the min go to the first candidate in response-id order.
    """
    groups = _by_prompt(scored, seed).values()
    return _highest_vs_lowest(sorted(c, key=lambda s: s.response_id) for c in groups)


def knockout(
    candidates: Sequence[int], prefer: Callable[[int, int], float]
) -> tuple[int, int] | None:
    """INPO's knockout tournament for a pairwise judge: (winner, loser), or None.

    `prefer(a, b)` is P(a ≻ b); a beats b when it is > ½, ties go to the first (a). The winners'
    bracket plays adjacent candidates off until one is left; the losers' bracket plays the
    first round's losers off, the LOSER advancing, until the worst is left. With K = 8 the
    first round is the paper's 4 pairs. The pair is kept only if the final check says the
    winner beats the loser.
    """
    if len(candidates) < 2:
        return None

    def play(field: list[int], keep_winner: bool) -> tuple[int, list[int]]:
        first_round_losers: list[int] = []
        first = True
        while len(field) > 1:
            nxt = []
            for i in range(0, len(field) - 1, 2):
                a, b = field[i], field[i + 1]
                win, lose = (a, b) if prefer(a, b) >= 0.5 else (b, a)
                nxt.append(win if keep_winner else lose)
                if first:
                    first_round_losers.append(lose)
            if len(field) % 2:
                nxt.append(field[-1])  # bye
            field, first = nxt, False
        return field[0], first_round_losers

    winner, losers = play(list(candidates), keep_winner=True)
    loser = losers[0] if len(losers) == 1 else play(losers, keep_winner=False)[0]
    if winner == loser or prefer(winner, loser) <= 0.5:
        return None
    return winner, loser


def sppo_pairs(scored: Sequence[ScoredResponse], p: PairParams, seed: int) -> list[PairChoice]:
    """SPPO (2405.00675): P̂_i = (1/K) Σ_j σ((s_i − s_j)/T) including j = i; the pair is
    (argmax P̂, argmin P̂) with both as targets. Kept even when all scores are equal (targets
    ½, ½: the loss then holds the policy at π_t, as the paper's procedure does)."""
    pairs: list[PairChoice] = []
    for candidates in _by_prompt(scored, seed).values():
        if len(candidates) < 2:
            continue
        ordered = sorted(candidates, key=lambda s: s.response_id)
        rates = win_rates([c.score for c in ordered], p.bt_temperature, include_self=True)
        w = max(range(len(ordered)), key=lambda i: rates[i])
        lo = min(range(len(ordered)), key=lambda i: rates[i])
        if w == lo:
            lo = len(ordered) - 1 if w == 0 else 0
        pairs.append(
            _choice(ordered[w], ordered[lo], chosen_target=rates[w], rejected_target=rates[lo])
        )
    return pairs


def xpo_pairs(scored: Sequence[ScoredResponse], p: PairParams, seed: int) -> list[PairChoice]:
    """XPO (2405.21046): a policy sample (sample_index < K) against a reference sample (≥ K).

    Per prompt, policy and reference samples are matched in seeded order, up to
    `max_pairs_per_prompt` pairs; the judge's higher score is the chosen one, ties dropped.
    """
    pairs: list[PairChoice] = []
    for candidates in _by_prompt(scored, seed).values():
        policy = [c for c in candidates if c.sample_index < p.policy_samples]
        reference = [c for c in candidates if c.sample_index >= p.policy_samples]
        for y, y_ref in list(zip(policy, reference, strict=False))[: p.max_pairs_per_prompt]:
            if y.score != y_ref.score:
                hi, lo = (y, y_ref) if y.score > y_ref.score else (y_ref, y)
                pairs.append(_choice(hi, lo))
    return pairs


def revision_pairs(scored: Sequence[ScoredResponse]) -> list[PairChoice]:
    """Critique → revise: (revision, original) for each revision the judge scored strictly
    higher than the response it revises (rows with `revises_id` set are revisions).

    Not a selectable builder: stages.pair_round adds these pairs (builder "revise") next to the
    configured builder's, which never sees revisions. No cap per prompt (revise.max_per_round
    caps revisions) and no length penalty; a revision or original without a successful
    judgment makes no pair.
    """
    by_id = {s.response_id: s for s in scored}
    pairs: list[PairChoice] = []
    for revision in scored:
        original = by_id.get(revision.revises_id) if revision.revises_id is not None else None
        if original is not None and revision.score > original.score:
            pairs.append(_choice(revision, original))
    return pairs


def replay_choice(
    earlier: Sequence[Sequence[int]], fractions: Sequence[float], current: int, seed: int
) -> list[int]:
    """DNO replay: pick pair ids to mix into a round from earlier rounds.

    `earlier[i]` holds the pair ids of round t−1−i; `fractions[i]` is how many of them to take,
    as a fraction of the `current` round's own pair count (paper: 0.3 from t−1, 0.15 from t−2).
    A seeded sample without replacement; never more than a round has.
    """
    out: list[int] = []
    rng = random.Random(seed)
    for ids, fraction in zip(earlier, fractions, strict=False):
        n = min(len(ids), round(fraction * current))
        out += rng.sample(sorted(ids), n)
    return out


def is_truncated(s: ScoredResponse) -> bool:
    """Whether the response was cut at max_new_tokens instead of ending its turn."""
    return s.finish_reason == "length"


def handle_truncated(
    scored: Sequence[ScoredResponse], mode: str, penalty: float
) -> list[ScoredResponse]:
    """pairing.truncated applied before pairing: "drop" leaves truncated responses out,
    "penalize" subtracts `penalty` from their score (TRL's missing_eos_penalty), "keep" pairs
    them like finished ones."""
    if mode == "keep":
        return list(scored)
    if mode == "drop":
        return [s for s in scored if not is_truncated(s)]
    return [replace(s, score=s.score - penalty) if is_truncated(s) else s for s in scored]


def no_pairs_reason(
    builder: str,
    judged: Sequence[ScoredResponse],
    candidates: Sequence[ScoredResponse],
    p: PairParams,
    truncated: str,
) -> str:
    """Why `builder` made no pair from `candidates` (the round's `judged` samples after
    pairing.truncated `truncated`), as one line for the round's report, e.g.
    "0 pairs: all 64 judged responses truncated (pairing.truncated: drop)"."""
    if not judged:
        return "0 pairs: no response has a successful judgment"
    cut = sum(map(is_truncated, judged))
    if not candidates:
        return f"0 pairs: all {cut} judged responses truncated (pairing.truncated: {truncated})"
    groups = [g for g in _by_prompt(candidates, 0).values() if len(g) >= 2]
    left = f" ({cut} truncated dropped)" if truncated == "drop" and cut else ""
    if not groups:
        return f"0 pairs: no prompt has two judged responses{left}"
    if builder == "dno":
        return _no_dno_pairs(groups, p) + left
    if builder == "xpo":
        mixed = [g for g in groups if len({c.sample_index < p.policy_samples for c in g}) == 2]
        if not mixed:
            return f"0 pairs: no prompt has both a policy and a reference sample{left}"
    if all(len({c.score for c in g}) == 1 for g in groups):
        return f"0 pairs: every prompt's responses scored equal{left}"
    return f"0 pairs: the {builder} builder found no pair that it keeps{left}"


def _no_dno_pairs(groups: Sequence[Sequence[ScoredResponse]], p: PairParams) -> str:
    """Why DNO's large-margin rule kept no pair among `groups` (prompts with ≥ 2 responses)."""
    gaps = []
    for g in groups:
        rates = win_rates([c.score for c in g], p.bt_temperature, include_self=False)
        degenerate = [is_degenerate(c.text, p.degenerate_ngram) for c in g]
        rates = [0.0 if d else r for r, d in zip(rates, degenerate, strict=True)]
        positives = [
            r
            for r, c, d in zip(rates, g, degenerate, strict=True)
            if not d and (p.dno_min_positive_score is None or c.score >= p.dno_min_positive_score)
        ]
        if positives:
            gaps.append(max(positives) - min(rates))
    if not gaps:
        return (
            "0 pairs: no response can be a DNO positive (every one degenerate or scored below "
            f"dno_min_positive_score {p.dno_min_positive_score})"
        )
    return (
        f"0 pairs: every win-rate gap below dno_margin {p.dno_margin:g} (largest "
        f"{max(gaps):.3f} at bt_temperature {p.bt_temperature:g})"
    )


Builder = Callable[[Sequence[ScoredResponse], PairParams, int], list[PairChoice]]

PAIR_BUILDERS: dict[str, Builder] = {
    "max_min": max_min_pairs,
    "max_random": max_random_pairs,
    "self_rewarding": self_rewarding_pairs,
    "dno": dno_pairs,
    "inpo": inpo_pairs,
    "sppo": sppo_pairs,
    "xpo": xpo_pairs,
}
