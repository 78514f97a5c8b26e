"""The pair stage: the round's preference pairs, a pure function of its judgments (the
configured builder over its samples, revisions against their originals, replayed pairs of
earlier rounds), stored in chunks."""

from __future__ import annotations

from sqlalchemy import select

from db import queries
from db.engine import transaction
from db.models import Metric, Pair
from selfplay.faults import commit_point
from selfplay.pairing import (
    PAIR_BUILDERS,
    PairParams,
    handle_truncated,
    is_truncated,
    no_pairs_reason,
    replay_choice,
    revision_pairs,
)
from selfplay.stages.context import Context, derive_seed, get_round, metric_rows

_PAIR_FIELDS = (
    "prompt_id",
    "chosen_id",
    "rejected_id",
    "chosen_score",
    "rejected_score",
    "margin",
    "chosen_target",
    "rejected_target",
)


def _pair_row(round_id: int, pair: object, builder: str, weight: float) -> dict:
    """A `pairs` row for this round from a PairChoice or an earlier round's Pair."""
    return dict(
        round_id=round_id,
        builder=builder,
        weight=weight,
        **{f: getattr(pair, f) for f in _PAIR_FIELDS},
    )


def _replayed_pairs(ctx: Context, round_index: int, round_id: int, own: int) -> list[dict]:
    """Copies of earlier rounds' pairs to mix into this round (pairing.replay fractions)."""
    fractions = ctx.cfg.pairing.replay
    if not fractions:
        return []
    with ctx.sessions() as s:
        earlier_rounds = [
            queries.get_round(s, ctx.run_id, round_index - 1 - i) for i in range(len(fractions))
        ]
        earlier = [queries.pair_ids(s, r.id) if r else [] for r in earlier_rounds]
        picked = replay_choice(earlier, fractions, own, derive_seed(ctx.cfg.run.seed, round_index))
        pairs = s.scalars(select(Pair).where(Pair.id.in_(picked)).order_by(Pair.id)).all()
        return [_pair_row(round_id, p, f"replay:{p.builder}", p.weight) for p in pairs]


def pair_round(ctx: Context, round_id: int) -> None:
    """Build and store the round's pairs from its judgments, with the stage's metrics; truncated
    responses are handled as pairing.truncated says, and a round without pairs stores why on
    its row (`no_pairs_reason`)."""
    cfg = ctx.cfg.pairing
    with ctx.sessions() as s:
        rnd = get_round(s, round_id)
        scored = queries.scored_responses(s, round_id, ctx.engines.judge_name)
        round_index = rnd.index
    params = PairParams(
        max_pairs_per_prompt=cfg.max_pairs_per_prompt,
        length_penalty=cfg.length_penalty,
        bt_temperature=cfg.bt_temperature,
        dno_margin=cfg.dno_margin,
        dno_min_positive_score=cfg.dno_min_positive_score,
        degenerate_ngram=cfg.degenerate_ngram,
        policy_samples=ctx.cfg.generation.samples_per_prompt,
    )
    builder = PAIR_BUILDERS[cfg.builder]
    judged = [r for r in scored if r.revises_id is None]
    scored = handle_truncated(scored, cfg.truncated, cfg.missing_eos_penalty)
    # The configured builder sees the round's samples only; revisions pair with their originals.
    samples = [r for r in scored if r.revises_id is None]
    choices = builder(samples, params, derive_seed(ctx.cfg.run.seed, round_index))
    revised = revision_pairs(scored)
    rows = [_pair_row(round_id, c, cfg.builder, 1.0) for c in choices]
    rows += [_pair_row(round_id, c, "revise", 1.0) for c in revised]
    rows += _replayed_pairs(ctx, round_index, round_id, len(rows))
    size = ctx.cfg.generation.prompts_per_batch
    for i in range(0, len(rows), size):
        with transaction(ctx.sessions) as s:
            queries.insert_ignore(s, Pair, rows[i : i + size])
        commit_point("pairing")
    scores = [r.score for r in samples]
    reason = None
    if not rows:
        reason = no_pairs_reason(cfg.builder, judged, samples, params, cfg.truncated)
    with transaction(ctx.sessions) as s:
        get_round(s, round_id).no_pairs_reason = reason
        values = {
            "pairs": float(len(rows)),
            "judged": float(len(judged)),
            "truncated": float(sum(map(is_truncated, judged))),
        }
        if scores:
            values["mean_score"] = sum(scores) / len(scores)
        if len(samples) < len(scored):
            values["revisions_judged"] = float(len(scored) - len(samples))
            values["revise_pairs"] = float(len(revised))
        queries.insert_ignore(s, Metric, metric_rows(ctx.run_id, round_index, "pair", 0, values))
