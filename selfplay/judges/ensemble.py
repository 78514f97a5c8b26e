"""The `ensemble` judge: several judges' scores normalised per judge, then aggregated.

Aggregates (Coste et al. 2023, ALGORITHMS.md "Judges") over the k members that succeeded:
mean R̄ = (1/k) Σ_i R_i; worst-case min_i R_i; uncertainty-weighted R̄ − λ·Var_i(R_i)
(population variance). With `normalize: z` each member's scores are z-scored over the batch
being judged (a judge chunk: a block of prompts × their samples) before aggregating, so judges
on different scales (0/1 verifier, 0–5 rubric, reward-model logits) weigh alike; a member
whose scores are all equal in the batch contributes 0 for every item.
"""

from __future__ import annotations

import statistics
import time

from selfplay.config import JudgeConfig
from selfplay.judges.base import BaseJudge, Judge, JudgeEnv, JudgeItem, Policy, Verdict, safe_judge


def _zscores(scores: list[float | None]) -> list[float | None]:
    """z-scores of the present values (population sd); a constant column scores 0."""
    present = [s for s in scores if s is not None]
    if not present:
        return scores
    mean = statistics.fmean(present)
    sd = statistics.pstdev(present)
    return [None if s is None else (s - mean) / sd if sd > 0 else 0.0 for s in scores]


def aggregate(values: list[float], how: str, weight: float) -> float:
    """mean, worst (min) or uncertainty (mean − weight·population variance) of member scores."""
    mean = statistics.fmean(values)
    if how == "mean":
        return mean
    if how == "worst":
        return min(values)
    return mean - weight * statistics.pvariance(values, mu=mean)


class EnsembleJudge(BaseJudge):
    """Judges each batch with every member, then combines their (normalised) scores."""

    name = "ensemble"

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        from selfplay.judges import make_judge

        self.cfg = cfg.ensemble
        self.members: list[Judge] = [make_judge(m, env) for m in self.cfg.members]
        self.needs_siblings = any(m.needs_siblings for m in self.members)
        self.needs_policy = any(m.needs_policy for m in self.members)

    def close(self) -> None:
        """Close every member (the api judge's client and loop, a reward model)."""
        for member in self.members:
            member.close()

    def judge(self, items: list[JudgeItem], policy: Policy | None = None) -> list[Verdict]:
        """Every member judges every item (those that ask the policy get `policy`); an item
        fails only when every member failed it."""
        start = time.perf_counter()
        per_member = [safe_judge(m, items, policy) for m in self.members]
        raw = [[v.score if v.status == "ok" else None for v in vs] for vs in per_member]
        normed = [_zscores(col) for col in raw] if self.cfg.normalize == "z" else raw
        latency = (time.perf_counter() - start) / max(len(items), 1)
        verdicts = []
        for i in range(len(items)):
            members = [
                {
                    "judge": judge.name,
                    "status": vs[i].status,
                    "score": vs[i].score,
                    "normalized": col[i],
                    "error": vs[i].error,
                }
                for judge, vs, col in zip(self.members, per_member, normed, strict=True)
            ]
            values = [m["normalized"] for m in members if m["normalized"] is not None]
            trace = {"aggregate": self.cfg.aggregate, "members": members}
            tokens = sum(vs[i].tokens or 0 for vs in per_member) or None
            cost = sum(vs[i].cost or 0.0 for vs in per_member) or None
            if not values:
                errors = "; ".join(f"{m['judge']}: {m['error']}" for m in members)
                verdicts.append(Verdict.failure(f"every member failed ({errors})", trace=trace))
                continue
            critiques = [
                f"[{j.name}] {vs[i].critique}"
                for j, vs in zip(self.members, per_member, strict=True)
                if vs[i].critique
            ]
            verdicts.append(
                Verdict(
                    status="ok",
                    score=aggregate(values, self.cfg.aggregate, self.cfg.uncertainty_weight),
                    critique="\n".join(critiques) or None,
                    trace=trace,
                    latency_s=latency,
                    tokens=tokens,
                    cost=cost,
                )
            )
        return verdicts
