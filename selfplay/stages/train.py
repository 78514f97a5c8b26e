"""The train stage: the log-probs the loss needs (computed once, stored), then the round's
policy trained on its pairs and saved as the round's checkpoint."""

from __future__ import annotations

from db import queries
from db.engine import transaction
from db.models import Checkpoint, Metric, ResponseLogprob
from selfplay.algorithms import LOSSES
from selfplay.checkpoints import resolve_checkpoint, round_checkpoint_dir
from selfplay.config import SelfplayConfig
from selfplay.devices import default_device
from selfplay.faults import commit_point
from selfplay.precision import save_dtype
from selfplay.rendering import PromptRenderer, padding_id
from selfplay.scoring import Scorer
from selfplay.stages.context import Context, derive_seed, get_round, metric_rows
from selfplay.tasks.base import Prompt

LOGPROB_CHUNK = 512
METRIC_FLUSH_STEPS = 50


def logprob_sources(cfg: SelfplayConfig) -> dict[str, str]:
    """Which checkpoint fills each log-prob slot of the loss: {"ref": …, "prev": …}."""
    spec = LOSSES[cfg.training.loss]
    out = {}
    if spec.reference is not None:
        out["ref"] = cfg.training.reference if spec.reference == "config" else spec.reference
    if spec.needs_prev:
        out["prev"] = "previous"
    return out


def pair_prompt(pair: queries.TrainingPair) -> Prompt:
    """The prompt a training pair answers, as stored (plain text or conversation)."""
    return Prompt.from_row(pair.prompt, None, pair.prompt_messages)


def ensure_logprobs(
    ctx: Context, round_id: int, source: str, pairs: list[queries.TrainingPair]
) -> dict[int, float]:
    """Score every paired response under a source's checkpoint once, store, and return them.

    Scored here on one device (`training.distributed.strategy: single`), or on the training's
    ranks (ddp, fsdp: each rank a whole copy of the checkpoint, scoring its share of every
    chunk); either way each chunk is stored as it comes, so only what is missing is scored.
    """
    from selfplay.training.distributed import ScoreJob, score_distributed, score_job_dir

    with ctx.sessions() as s:
        rnd = get_round(s, round_id)
        ckpt = resolve_checkpoint(s, ctx.run_id, rnd, source)
        round_index = rnd.index
        wanted = {p.chosen_id: p for p in pairs} | {p.rejected_id: p for p in pairs}
        have = queries.logprobs_for(s, ckpt.id, wanted)
    missing = sorted(set(wanted) - set(have))
    if not missing:
        return have
    responses = [
        wanted[rid].chosen_token_ids
        if rid == wanted[rid].chosen_id
        else wanted[rid].rejected_token_ids
        for rid in missing
    ]
    label = "reference log-probs" if source == "sft" else "π_t log-probs"
    with ctx.reporter.bar(label, len(missing)) as advance:

        def store(start: int, values: list[float]) -> None:
            ids = missing[start : start + len(values)]
            rows = [
                dict(response_id=rid, checkpoint_id=ckpt.id, logprob=v)
                for rid, v in zip(ids, values, strict=True)
            ]
            with transaction(ctx.sessions) as s:
                queries.insert_ignore(s, ResponseLogprob, rows)
            commit_point("training")
            have.update(zip(ids, values, strict=True))
            advance(len(ids))

        distributed = ctx.cfg.training.distributed
        if distributed.strategy == "single":
            scorer = Scorer(ckpt.path, ctx.cfg.model.dtype, ctx.cfg.model.chat_template)
            prompts = [pair_prompt(wanted[rid]) for rid in missing]
            for i in range(0, len(missing), LOGPROB_CHUNK):
                chunk = slice(i, i + LOGPROB_CHUNK)
                store(i, scorer.score(prompts[chunk], responses[chunk]))
            del scorer  # only the policy stays in memory while training
        else:
            job = ScoreJob(
                ckpt.path,
                ctx.cfg.model.dtype,
                ctx.cfg.model.chat_template,
                [(wanted[rid].prompt, wanted[rid].prompt_messages) for rid in missing],
                responses,
                distributed.nproc,
                LOGPROB_CHUNK,
            )
            job_dir = score_job_dir(ctx.cfg.run.output_dir, round_index, ckpt.id)
            score_distributed(job, job_dir, store)
    return have


def train_round(ctx: Context, round_id: int) -> None:
    """Train the round's policy on its pairs and store the new checkpoint.

    Reference log-probs are computed once (and stored); the optimisation itself restarts from
    the round's policy if interrupted, which reproduces the same weights for the same seed.
    """
    from transformers import AutoTokenizer

    from selfplay.training.distributed import Job, round_job_dir, train_distributed
    from selfplay.training.trainer import (
        PairExample,
        load_trainable,
        planned_steps,
        save_trained,
        train_on_pairs,
    )

    with ctx.sessions() as s:
        rnd = get_round(s, round_id)
        if rnd.output_checkpoint_id is not None:
            return
        round_index, policy = rnd.index, rnd.policy_checkpoint
        pairs = queries.training_pairs(s, round_id)
    logps = {
        slot: ensure_logprobs(ctx, round_id, source, pairs)
        for slot, source in logprob_sources(ctx.cfg).items()
    }
    ref, prev = logps.get("ref", {}), logps.get("prev")
    spec = LOSSES[ctx.cfg.training.loss]
    k = ctx.cfg.generation.samples_per_prompt

    tokenizer = AutoTokenizer.from_pretrained(policy.path)
    renderer = PromptRenderer(tokenizer, ctx.cfg.model.chat_template, policy.path)
    prompt_ids = renderer.ids_batch([pair_prompt(p) for p in pairs])
    examples = [
        PairExample(
            prompt_ids=ids,
            chosen_ids=p.chosen_token_ids,
            rejected_ids=p.rejected_token_ids,
            ref_chosen_logp=ref.get(p.chosen_id, 0.0),
            ref_rejected_logp=ref.get(p.rejected_id, 0.0),
            prev_chosen_logp=prev[p.chosen_id] if prev is not None else None,
            prev_rejected_logp=prev[p.rejected_id] if prev is not None else None,
            chosen_target=p.chosen_target,
            rejected_target=p.rejected_target,
            chosen_is_ref_sample=(p.chosen_sample_index >= k) if spec.needs_ref_sample else None,
        )
        for p, ids in zip(pairs, prompt_ids, strict=True)
    ]
    with transaction(ctx.sessions) as s:
        queries.delete_metrics(s, ctx.run_id, round_index, "train")
    buffer: list[dict] = []

    def flush() -> None:
        with transaction(ctx.sessions) as s:
            queries.insert_ignore(s, Metric, buffer)
        buffer.clear()
        commit_point("training")

    cfg = ctx.cfg.training
    seed = derive_seed(ctx.cfg.run.seed, round_index)
    target = round_checkpoint_dir(ctx.cfg.run.output_dir, round_index)
    dtype = save_dtype(ctx.cfg.model.dtype, policy.path)
    steps = planned_steps(len(examples), cfg)
    with ctx.reporter.bar(f"training ({len(examples)} pairs)", steps) as advance:

        def on_step(step: int, values: dict[str, float]) -> None:
            buffer.extend(metric_rows(ctx.run_id, round_index, "train", step, values))
            advance(1)
            if step % METRIC_FLUSH_STEPS == 0:
                flush()

        if cfg.distributed.strategy == "single":
            model = load_trainable(policy.path, cfg, default_device())
            train_on_pairs(
                model, examples, cfg, pad_id=padding_id(tokenizer), seed=seed, on_step=on_step
            )
            save_trained(model, cfg, tokenizer, target, dtype)
        else:  # the ranks save the checkpoint
            job = Job(
                policy.path,
                examples,
                cfg,
                padding_id(tokenizer),
                seed,
                str(target),
                save_dtype=str(dtype).removeprefix("torch."),
            )
            train_distributed(job, round_job_dir(ctx.cfg.run.output_dir, round_index), on_step)
    if buffer:
        flush()

    with transaction(ctx.sessions) as s:
        queries.insert_ignore(
            s, Checkpoint, [dict(run_id=ctx.run_id, round_index=round_index, path=str(target))]
        )
        ckpt = queries.get_checkpoint(s, ctx.run_id, round_index)
        get_round(s, round_id).output_checkpoint_id = ckpt.id
    commit_point("training")
