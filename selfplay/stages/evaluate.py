"""The evaluate stage: the new checkpoint's figures on the task's held-out prompts, then the
overoptimisation guards on one sample per held-out prompt.

- accuracy (held-out prompts with answers): greedy decoding checked by the task's verifier;
- win rate (open-ended prompts): one sampled response per held-out prompt compared by the
  run's judge with a baseline's response to the same prompt — the initial policy's (sampled
  once per run) or an `evaluation.reference` file's — pairwise in both orders when the judge
  can compare, else by its pointwise scores (ties half); with its standard error and
  AlpacaEval 2's length-controlled form (selfplay/win_rate.py);
- judge score: the judge's mean pointwise score of those responses.

`evaluation.metric` picks the figure that the round line, the guards, the best checkpoint
and checkpoint retention read (`Checkpoint.heldout_score`). Every row is computed from what
is missing, in fixed batches with seeds of their own: a crash mid-evaluation redoes only the
missing responses and comparisons, and the final rows equal an uninterrupted run's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from db import evaluations, queries
from db.engine import transaction
from db.models import (
    REFERENCE_CHECKPOINT_PREFIX,
    REFERENCE_ROUND_INDEX,
    Checkpoint,
    EvalComparison,
    EvalResponse,
    EvalScore,
    Metric,
)
from selfplay.checkpoints import SFT_ROUND_INDEX
from selfplay.config import ConfigError, SelfplayConfig
from selfplay.faults import commit_point
from selfplay.generation.base import GenerationBackend, Sample, SamplingParams
from selfplay.judges import NoisyJudge
from selfplay.judges.base import (
    Judge,
    JudgeItem,
    PairItem,
    PairwiseJudge,
    Policy,
    safe_judge,
    symmetric_compare,
)
from selfplay.reference_responses import read_reference
from selfplay.scoring import Scorer
from selfplay.stages.context import Context, derive_seed, get_round, metric_rows
from selfplay.tasks.base import Prompt, Task
from selfplay.tasks.records import TaskDataError
from selfplay.win_rate import win_rate

GUARD_SEED_SALT = 1 << 20  # keeps the guard's samples apart from the generation blocks'
EVAL_SEED_SALT = 1 << 21  # and the evaluation's from both

METRIC_NAMES = {
    "accuracy": "held-out accuracy",
    "win_rate": "held-out win rate",
    "win_rate_lc": "held-out LC win rate",
    "judge_score": "held-out judge score",
}
"""How each evaluation.metric is named in the lines the run prints."""

_JUDGE_COLUMNS = ("status", "critique", "trace", "error", "latency_s", "tokens", "cost")


def resolve_metric(cfg: SelfplayConfig, heldout: list[Prompt]) -> str | None:
    """The run's evaluation metric: evaluation.metric, or by default accuracy when every
    held-out prompt has an answer and win rate otherwise; None without held-out prompts.
    A ConfigError when accuracy is asked for prompts without answers."""
    if not heldout:
        return None
    answered = all(p.answer is not None for p in heldout)
    metric = cfg.evaluation.metric
    if metric is None:
        return "accuracy" if answered else "win_rate"
    if metric == "accuracy" and not answered:
        missing = sum(p.answer is None for p in heldout)
        raise ConfigError(
            f"evaluation.metric: accuracy needs an answer on every held-out prompt "
            f"({missing} of {len(heldout)} have none); use win_rate or judge_score"
        )
    return metric


def check_evaluation(cfg: SelfplayConfig, task: Task) -> None:
    """What the evaluation will need, checked before anything is written: the metric suits
    the held-out prompts, and an evaluation.reference file answers each of them."""
    heldout = task.heldout_prompts()
    metric = resolve_metric(cfg, heldout)
    if cfg.evaluation.reference is not None:
        if metric is None:
            raise ConfigError("evaluation.reference: the task has no held-out prompts")
        try:
            read_reference(cfg.evaluation.reference, heldout)
        except TaskDataError as err:
            raise ConfigError(str(err)) from None
    if metric == "judge_score" and cfg.judge.name == "api" and cfg.judge.api.mode == "pairwise":
        raise ConfigError(
            "evaluation.metric: judge_score needs a pointwise judge; judge.api.mode pairwise "
            "scores a response against its siblings (use win_rate)"
        )


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


def _store_accuracy(ctx: Context, ckpt: Checkpoint, round_index: int) -> float:
    if ckpt.heldout_accuracy is not None:
        return ckpt.heldout_accuracy
    accuracy, length = heldout_accuracy(ctx, ckpt.path)
    with transaction(ctx.sessions) as s:
        s.get(Checkpoint, ckpt.id).heldout_accuracy = accuracy
        values = {"heldout_accuracy": accuracy, "heldout_mean_tokens": length}
        queries.insert_ignore(s, Metric, metric_rows(ctx.run_id, round_index, "eval", 0, values))
    commit_point("evaluating")
    return accuracy


def sample_eval_responses(ctx: Context, checkpoint_id: int, round_index: int, path: str) -> None:
    """One response per held-out prompt from the checkpoint (evaluation's sampling settings),
    for the batches that miss any: batch b of `evaluation.batch_size` prompts always has the
    same prompts and seed, and is stored in one transaction."""
    prompts = ctx.engines.task.heldout_prompts()
    with ctx.sessions() as s:
        have = set(evaluations.eval_responses(s, checkpoint_id))
    size = ctx.cfg.evaluation.batch_size
    starts = range(0, len(prompts), size)
    todo = [b for b in starts if any(i not in have for i in range(b, min(b + size, len(prompts))))]
    if not todo:
        return
    ev, backend = ctx.cfg.evaluation, ctx.engines.backend
    backend.load(path)
    total = sum(min(size, len(prompts) - b) for b in todo)
    with ctx.reporter.bar("evaluating: sampling", total) as advance:
        for b in todo:
            batch = prompts[b : b + size]
            params = SamplingParams(
                n=1,
                temperature=ev.temperature,
                top_p=ev.top_p,
                max_new_tokens=ev.max_new_tokens or ctx.cfg.generation.max_new_tokens,
                seed=derive_seed(ctx.cfg.run.seed, round_index, EVAL_SEED_SALT, b),
            )
            samples = [out[0] for out in backend.generate(batch, params)]
            rows = [
                dict(
                    run_id=ctx.run_id,
                    checkpoint_id=checkpoint_id,
                    heldout_index=b + i,
                    prompt=p.text,
                    text=y.text,
                    num_tokens=len(y.token_ids),
                    finish_reason=y.finish_reason,
                )
                for i, (p, y) in enumerate(zip(batch, samples, strict=True))
            ]
            with transaction(ctx.sessions) as s:
                queries.insert_ignore(s, EvalResponse, rows)
            commit_point("evaluating")
            advance(len(batch))


def reference_checkpoint(ctx: Context) -> int:
    """The checkpoint row standing for the evaluation.reference file, with its responses
    stored (once per run); its id."""
    path: Path = ctx.cfg.evaluation.reference
    prompts = ctx.engines.task.heldout_prompts()
    with ctx.sessions() as s:
        ckpt = queries.get_checkpoint(s, ctx.run_id, REFERENCE_ROUND_INDEX)
        if ckpt is not None and len(evaluations.eval_responses(s, ckpt.id)) == len(prompts):
            return ckpt.id
    responses = read_reference(path, prompts)  # checked at startup: raises only if it changed
    with transaction(ctx.sessions) as s:
        row = dict(
            run_id=ctx.run_id,
            round_index=REFERENCE_ROUND_INDEX,
            path=f"{REFERENCE_CHECKPOINT_PREFIX}{path}",
        )
        queries.insert_ignore(s, Checkpoint, [row])
        ckpt_id = queries.get_checkpoint(s, ctx.run_id, REFERENCE_ROUND_INDEX).id
        rows = [
            dict(run_id=ctx.run_id, checkpoint_id=ckpt_id, heldout_index=i, prompt=p.text, text=r)
            for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
        ]
        queries.insert_ignore(s, EvalResponse, rows)
    return ckpt_id


def evaluation_judge(ctx: Context) -> Judge:
    """The judge evaluation asks: the run's judge without its label noise (judge.flip_rate
    corrupts training labels, never the measurement)."""
    judge = ctx.engines.judge
    return judge.inner if isinstance(judge, NoisyJudge) else judge


def _judging_policy(ctx: Context, judge: Judge) -> Policy | None:
    """A judge that asks the policy asks the initial policy: one fixed judge for every
    round's evaluation, and never the policy being evaluated."""
    if not judge.needs_policy:
        return None
    with ctx.sessions() as s:
        sft_path = queries.get_checkpoint(s, ctx.run_id, SFT_ROUND_INDEX).path
    return Policy(ctx.engines.backend, sft_path)


def _judge_rows(outcome: object) -> dict:
    return {column: getattr(outcome, column) for column in _JUDGE_COLUMNS}


def score_eval_responses(ctx: Context, checkpoint_id: int, judge: Judge) -> None:
    """The judge's score of each of the checkpoint's evaluation responses it has not scored,
    a batch per transaction (failures stored as failed)."""
    prompts = ctx.engines.task.heldout_prompts()
    with ctx.sessions() as s:
        todo = evaluations.unscored(s, checkpoint_id, judge.name)
    if not todo:
        return
    policy, size = _judging_policy(ctx, judge), ctx.cfg.evaluation.batch_size
    with ctx.reporter.bar("evaluating: scoring", len(todo)) as advance:
        for b in range(0, len(todo), size):
            chunk = todo[b : b + size]
            items = [JudgeItem(prompts[r.heldout_index], r.text, {"repeat": 0}) for r in chunk]
            if judge.needs_siblings:
                items = [
                    JudgeItem(i.prompt, i.response, {**i.extra, "siblings": []}) for i in items
                ]
            verdicts = safe_judge(judge, items, policy)
            rows = [
                dict(response_id=r.id, judge=judge.name, repeat=0, score=v.score, **_judge_rows(v))
                for r, v in zip(chunk, verdicts, strict=True)
            ]
            with transaction(ctx.sessions) as s:
                queries.insert_ignore(s, EvalScore, rows)
            commit_point("evaluating")
            advance(len(chunk))


def compare_eval_responses(
    ctx: Context, checkpoint_id: int, baseline_id: int, judge: PairwiseJudge
) -> None:
    """The judge's comparison, in both orders, of each of the checkpoint's evaluation
    responses with the baseline's response to the same prompt that it has not compared yet."""
    prompts = ctx.engines.task.heldout_prompts()
    with ctx.sessions() as s:
        todo = evaluations.uncompared(s, checkpoint_id, baseline_id, judge.name)
    if not todo:
        return
    size = ctx.cfg.evaluation.batch_size
    with ctx.reporter.bar("evaluating: comparing", len(todo)) as advance:
        for b in range(0, len(todo), size):
            chunk = todo[b : b + size]
            items = [PairItem(prompts[r.heldout_index], r.text, base.text) for r, base in chunk]
            comparisons = symmetric_compare(judge, items)
            rows = [
                dict(
                    response_id=r.id,
                    baseline_id=base.id,
                    judge=judge.name,
                    repeat=0,
                    outcome=c.prob,
                    **_judge_rows(c),
                )
                for (r, base), c in zip(chunk, comparisons, strict=True)
            ]
            with transaction(ctx.sessions) as s:
                queries.insert_ignore(s, EvalComparison, rows)
            commit_point("evaluating")
            advance(len(chunk))


def _pointwise_outcome(mine: float, theirs: float) -> float:
    return 1.0 if mine > theirs else 0.0 if mine < theirs else 0.5


def win_rate_figures(ctx: Context, checkpoint_id: int, baseline_id: int) -> dict[str, float]:
    """Judge the checkpoint's evaluation responses against the baseline's (what is missing)
    and return the win-rate figures stored as metrics of stage `eval` (only the failure count
    when no comparison succeeded; no LC when every length difference has one sign)."""
    judge = evaluation_judge(ctx)
    pairwise = isinstance(judge, PairwiseJudge)
    if pairwise:
        compare_eval_responses(ctx, checkpoint_id, baseline_id, judge)
    else:
        score_eval_responses(ctx, baseline_id, judge)
        score_eval_responses(ctx, checkpoint_id, judge)
    with ctx.sessions() as s:
        mine = evaluations.eval_responses(s, checkpoint_id)
        theirs = evaluations.eval_responses(s, baseline_id)
        if pairwise:
            outcomes = evaluations.comparison_outcomes(s, checkpoint_id, baseline_id, judge.name)
        else:
            a = evaluations.scores(s, checkpoint_id, judge.name)
            b = evaluations.scores(s, baseline_id, judge.name)
            outcomes = {
                i: None if a.get(i) is None or b.get(i) is None else _pointwise_outcome(a[i], b[i])
                for i in mine
                if i in theirs
            }
    ok = sorted(i for i, y in outcomes.items() if y is not None)
    failed = len(outcomes) - len(ok)
    if not ok:
        return {"win_rate_failed": failed}
    wr = win_rate(
        [outcomes[i] for i in ok],
        [len(mine[i].text) for i in ok],
        [len(theirs[i].text) for i in ok],
    )
    figures = {
        "win_rate": wr.win_rate,
        "win_rate_se": wr.win_rate_se,
        "win_rate_lc": wr.win_rate_lc,
        "win_rate_n": wr.n,
        "win_rate_failed": failed,
        "win_rate_tie_share": wr.tie_share,
        "win_rate_length_coefficient": wr.length_coefficient,
        "eval_mean_chars": wr.policy_mean_length,
        "baseline_mean_chars": wr.baseline_mean_length,
    }
    return {name: value for name, value in figures.items() if value is not None}


def judge_score_figures(ctx: Context, checkpoint_id: int) -> dict[str, float]:
    """Score the checkpoint's evaluation responses (what is missing) and return the judge
    score's figures: mean, standard error, n, failures (no mean when none succeeded)."""
    judge = evaluation_judge(ctx)
    score_eval_responses(ctx, checkpoint_id, judge)
    with ctx.sessions() as s:
        got = evaluations.scores(s, checkpoint_id, judge.name)
        texts = evaluations.eval_responses(s, checkpoint_id)
    ok = [v for v in got.values() if v is not None]
    values: dict[str, float] = {"judge_score_failed": len(got) - len(ok)}
    if ok:
        n, mean = len(ok), sum(ok) / len(ok)
        var = sum((v - mean) ** 2 for v in ok) / (n - 1) if n > 1 else 0.0
        values |= {
            "judge_score": mean,
            "judge_score_se": math.sqrt(var / n),
            "judge_score_n": n,
            "eval_mean_chars": sum(len(t.text) for t in texts.values()) / len(texts),
        }
    return values


def _baseline(ctx: Context) -> int:
    """The win-rate baseline's checkpoint id with its evaluation responses stored: the
    reference file's, or the initial policy's (sampled once per run)."""
    if ctx.cfg.evaluation.reference is not None:
        return reference_checkpoint(ctx)
    with ctx.sessions() as s:
        sft = queries.get_checkpoint(s, ctx.run_id, SFT_ROUND_INDEX)
        sft_id, sft_path = sft.id, sft.path
    sample_eval_responses(ctx, sft_id, SFT_ROUND_INDEX, sft_path)
    return sft_id


def evaluate_checkpoint(ctx: Context, checkpoint_id: int, round_index: int) -> float | None:
    """Evaluate a checkpoint on the held-out set and store its figures (metrics of stage
    `eval`) and its value of the run's metric (`heldout_score`, returned); what is stored
    already is not redone. None without held-out prompts, or when no judgment of the
    evaluation succeeded.

    The initial policy's win rate against itself (the default baseline) is 0.5 by
    definition: its responses are sampled, as every round's baseline, and not judged.
    """
    task = ctx.engines.task
    prompts = task.heldout_prompts()
    metric = resolve_metric(ctx.cfg, prompts)
    with ctx.sessions() as s:
        ckpt = s.get(Checkpoint, checkpoint_id)
        s.expunge(ckpt)
    if metric is None or ckpt.heldout_score is not None:
        return ckpt.heldout_score
    values: dict[str, float] = {}
    if all(p.answer is not None for p in prompts):
        values["heldout_accuracy"] = _store_accuracy(ctx, ckpt, round_index)
    figures: dict[str, float] = {}
    if metric in ("win_rate", "win_rate_lc"):
        baseline_id = _baseline(ctx)
        if baseline_id == checkpoint_id:
            values |= {"win_rate": 0.5, "win_rate_lc": 0.5}
        else:
            sample_eval_responses(ctx, checkpoint_id, round_index, ckpt.path)
            figures = win_rate_figures(ctx, checkpoint_id, baseline_id)
    elif metric == "judge_score":
        sample_eval_responses(ctx, checkpoint_id, round_index, ckpt.path)
        figures = judge_score_figures(ctx, checkpoint_id)
    if figures:
        with transaction(ctx.sessions) as s:
            rows = metric_rows(ctx.run_id, round_index, "eval", 0, figures)
            queries.insert_ignore(s, Metric, rows)
        values |= figures
    metric_column = "heldout_accuracy" if metric == "accuracy" else metric
    score = values.get(metric_column)
    if score is not None:
        with transaction(ctx.sessions) as s:
            s.get(Checkpoint, checkpoint_id).heldout_score = score
        commit_point("evaluating")
    return score


def guard_metrics(ctx: Context, round_id: int) -> dict[str, float] | None:
    """Overoptimisation guards on one sample per held-out prompt from the round's new policy.

    Stores (stage "guard", once per round): kl_sft, a Monte-Carlo estimate of
    KL(π_new ‖ π_sft) = E_y~π_new[S_new(y) − S_sft(y)] (nats per response); proxy_score, the
    training judge's mean score of the samples (a judge that asks the policy asks the round's
    policy π_t, as when it labelled the round); gold_score, the task verifier's accuracy on the
    samples of prompts with an answer (absent when none has one); proxy_gold_gap = proxy −
    gold (Gao et al. 2023: a growing gap is the judge being gamed); sampled_mean_tokens. None
    when disabled or without held-out prompts.
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
    gold = [
        task.verify(p, y.text)[0]
        for p, y in zip(prompts, samples, strict=True)
        if p.answer is not None
    ]
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
        "sampled_mean_tokens": sum(len(y.token_ids) for y in samples) / n,
    }
    if gold:
        values["gold_score"] = sum(gold) / len(gold)
    if proxy:
        values["proxy_score"] = sum(proxy) / len(proxy)
    if gold and proxy:
        values["proxy_gold_gap"] = values["proxy_score"] - values["gold_score"]
    with transaction(ctx.sessions) as s:
        queries.insert_ignore(s, Metric, metric_rows(ctx.run_id, round_index, "guard", 0, values))
    commit_point("evaluating")
    return values


def evaluate_round(ctx: Context, round_id: int) -> None:
    """The round's new checkpoint evaluated (`evaluate_checkpoint`; its held-out accuracy
    also stored on the round), then the overoptimisation guard metrics."""
    with ctx.sessions() as s:
        rnd = get_round(s, round_id)
        checkpoint_id, round_index = rnd.output_checkpoint_id, rnd.index
    evaluate_checkpoint(ctx, checkpoint_id, round_index)
    with transaction(ctx.sessions) as s:
        rnd = get_round(s, round_id)
        rnd.heldout_accuracy = s.get(Checkpoint, checkpoint_id).heldout_accuracy
    guard_metrics(ctx, round_id)
