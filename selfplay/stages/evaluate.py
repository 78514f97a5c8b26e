"""The evaluate stage: the new checkpoint's greedy accuracy on the task's held-out prompts,
then the overoptimisation guards on one sample per held-out prompt."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from db import queries
from db.engine import transaction
from db.models import Checkpoint, Metric
from selfplay.checkpoints import SFT_ROUND_INDEX
from selfplay.faults import commit_point
from selfplay.generation.base import GenerationBackend, Sample, SamplingParams
from selfplay.judges.base import JudgeItem, Policy, safe_judge
from selfplay.scoring import Scorer
from selfplay.stages.context import Context, derive_seed, get_round, metric_rows
from selfplay.tasks.base import Prompt

GUARD_SEED_SALT = 1 << 20  # keeps the guard's samples apart from the generation blocks'


def sample_once(
    backend: GenerationBackend,
    prompts: list[Prompt],
    params: SamplingParams,
    batch_size: int,
    advance: Callable[[int], None] = lambda n: None,
) -> list[Sample]:
    """One sample per prompt from the loaded checkpoint, `batch_size` prompts at a time."""
    samples: list[Sample] = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        samples += [out[0] for out in backend.generate(batch, params)]
        advance(len(batch))
    return samples


def heldout_accuracy(ctx: Context, checkpoint_path: str) -> tuple[float, float] | None:
    """Greedy accuracy on the task's held-out prompts and mean response length in tokens.

    None when the task has no held-out prompts (a JSONL file with no `"split": "heldout"` line).
    """
    task = ctx.engines.task
    prompts = task.heldout_prompts()
    if not prompts:
        return None
    backend = ctx.engines.backend
    backend.load(checkpoint_path)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=ctx.cfg.generation.max_new_tokens)
    with ctx.reporter.bar("evaluating", len(prompts)) as advance:
        samples = sample_once(backend, prompts, params, ctx.cfg.evaluation.batch_size, advance)
    correct = sum(task.verify(p, y.text)[0] for p, y in zip(prompts, samples, strict=True))
    tokens = sum(len(y.token_ids) for y in samples)
    return correct / len(prompts), tokens / len(prompts)


def evaluate_checkpoint(ctx: Context, checkpoint_id: int, round_index: int) -> float | None:
    """Evaluate a checkpoint on the held-out set (once) and store the accuracy on it."""
    with ctx.sessions() as s:
        ckpt = s.get(Checkpoint, checkpoint_id)
        if ckpt.heldout_accuracy is not None:
            return ckpt.heldout_accuracy
        path = ckpt.path
    result = heldout_accuracy(ctx, path)
    if result is None:
        return None
    accuracy, length = result
    with transaction(ctx.sessions) as s:
        s.get(Checkpoint, checkpoint_id).heldout_accuracy = accuracy
        values = {"heldout_accuracy": accuracy, "heldout_mean_tokens": length}
        queries.insert_ignore(s, Metric, metric_rows(ctx.run_id, round_index, "eval", 0, values))
    commit_point("evaluating")
    return accuracy


def guard_metrics(ctx: Context, round_id: int) -> dict[str, float] | None:
    """Overoptimisation guards on one sample per held-out prompt from the round's new policy.

    Stores (stage "guard", once per round): kl_sft, a Monte-Carlo estimate of
    KL(π_new ‖ π_sft) = E_y~π_new[S_new(y) − S_sft(y)] (nats per response); proxy_score, the
    training judge's mean score of the samples (a judge that asks the policy asks the round's
    policy π_t, as when it labelled the round); gold_score, the task verifier's accuracy on the
    same samples; proxy_gold_gap = proxy − gold (Gao et al. 2023: a growing gap is the judge
    being gamed); sampled_mean_tokens. None when disabled or without held-out prompts.
    """
    task = ctx.engines.task
    prompts = task.heldout_prompts()
    if not ctx.cfg.guards.heldout_samples or not prompts:
        return None
    with ctx.sessions() as s:
        rnd = get_round(s, round_id)
        round_index = rnd.index
        done = s.scalar(
            select(Metric.id)
            .where(
                Metric.run_id == ctx.run_id,
                Metric.round_index == round_index,
                Metric.stage == "guard",
            )
            .limit(1)
        )
        if done is not None:
            return None
        new_path = s.get(Checkpoint, rnd.output_checkpoint_id).path
        judging_path = rnd.policy_checkpoint.path
        sft_path = queries.get_checkpoint(s, ctx.run_id, SFT_ROUND_INDEX).path
    backend = ctx.engines.backend
    backend.load(new_path)
    params = SamplingParams(
        n=1,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=ctx.cfg.generation.max_new_tokens,
        seed=derive_seed(ctx.cfg.run.seed, round_index, GUARD_SEED_SALT),
    )
    samples = sample_once(backend, prompts, params, ctx.cfg.evaluation.batch_size)
    gold = [task.verify(p, y.text)[0] for p, y in zip(prompts, samples, strict=True)]
    judge = ctx.engines.judge
    policy: Policy | None = ctx.engines.policy(judging_path)
    verdicts = safe_judge(
        judge, [JudgeItem(p, y.text) for p, y in zip(prompts, samples, strict=True)], policy
    )
    proxy = [v.score for v in verdicts if v.status == "ok" and v.score is not None]

    sft = Scorer(sft_path, ctx.cfg.model.dtype, ctx.cfg.model.chat_template)
    ref = sft.score(prompts, [y.token_ids for y in samples])
    del sft
    n = len(samples)
    values = {
        "kl_sft": sum(y.logprob - r for y, r in zip(samples, ref, strict=True)) / n,
        "gold_score": sum(gold) / n,
        "sampled_mean_tokens": sum(len(y.token_ids) for y in samples) / n,
    }
    if proxy:
        values["proxy_score"] = sum(proxy) / len(proxy)
        values["proxy_gold_gap"] = values["proxy_score"] - values["gold_score"]
    with transaction(ctx.sessions) as s:
        queries.insert_ignore(s, Metric, metric_rows(ctx.run_id, round_index, "guard", 0, values))
    commit_point("evaluating")
    return values


def evaluate_round(ctx: Context, round_id: int) -> None:
    """Held-out greedy accuracy of the round's new checkpoint, stored on the round, then the
    overoptimisation guard metrics."""
    with ctx.sessions() as s:
        rnd = get_round(s, round_id)
        checkpoint_id, round_index = rnd.output_checkpoint_id, rnd.index
    accuracy = evaluate_checkpoint(ctx, checkpoint_id, round_index)
    with transaction(ctx.sessions) as s:
        get_round(s, round_id).heldout_accuracy = accuracy
    guard_metrics(ctx, round_id)
