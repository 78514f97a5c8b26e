"""The stage functions of a round: generate, judge, pair, train, evaluate.

Each computes its missing work from the store, does it in chunks and commits each chunk, so a
stage killed at any point and run again finishes the same work with no duplicate rows (unique
keys make a repeated insert a no-op). The embedded driver calls these in-process; the
distributed executor runs the same functions as Celery tasks.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.engine import transaction
from db.models import Checkpoint, Judgment, Metric, Pair, Prompt, Response, ResponseLogprob, Round
from selfplay.config import SelfplayConfig
from selfplay.faults import commit_point
from selfplay.generation import make_backend
from selfplay.generation.base import GenerationBackend, SamplingParams
from selfplay.judges import Judge, JudgeItem
from selfplay.pairing import PAIR_BUILDERS
from selfplay.progress import Reporter
from selfplay.tasks.base import Prompt as TaskPrompt
from selfplay.tasks.base import Task

LOGPROB_CHUNK = 512
METRIC_FLUSH_STEPS = 50


@dataclass
class Context:
    """What every stage needs: the config, the store, the task, the judge, a progress sink."""

    cfg: SelfplayConfig
    sessions: sessionmaker[Session]
    run_id: int
    task: Task
    judge: Judge
    reporter: Reporter
    _backend: GenerationBackend | None = field(default=None, repr=False)

    @property
    def backend(self) -> GenerationBackend:
        """The generation engine, created on first use and kept loaded."""
        if self._backend is None:
            self._backend = make_backend(self.cfg.generation)
        return self._backend


def derive_seed(*parts: int) -> int:
    """A deterministic 31-bit seed from integers (run seed, round, chunk, …)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h % (2**31 - 1)


def _round(session: Session, round_id: int) -> Round:
    rnd = session.get(Round, round_id)
    if rnd is None:
        raise LookupError(f"round id {round_id} does not exist")
    return rnd


def _metrics(run_id: int, round_index: int, stage: str, step: int, values: dict) -> list[dict]:
    return [
        dict(run_id=run_id, round_index=round_index, stage=stage, step=step, name=k, value=v)
        for k, v in values.items()
    ]


# -- generate -----------------------------------------------------------------------------


def ensure_prompts(ctx: Context, round_id: int) -> None:
    """Insert the round's train prompts (drawn deterministically from seed and round index)."""
    with transaction(ctx.sessions) as s:
        rnd = _round(s, round_id)
        prompts = ctx.task.train_prompts(rnd.index, ctx.cfg.task.prompts_per_round)
        rows = [
            dict(round_id=round_id, index=i, text=p.text, answer=p.answer)
            for i, p in enumerate(prompts)
        ]
        queries.insert_ignore(s, Prompt, rows)


def generate_block(ctx: Context, round_id: int, block: int) -> int:
    """Generate K samples for every prompt of one block; returns new responses stored.

    A block is a fixed range of prompt indices, sampled with a seed derived from (run seed,
    round, block): re-running a block after a crash reproduces the same samples.
    """
    gen = ctx.cfg.generation
    size = gen.prompts_per_batch
    with ctx.sessions() as s:
        rnd = _round(s, round_id)
        policy = rnd.policy_checkpoint
        prompts = list(
            s.scalars(
                select(Prompt)
                .where(
                    Prompt.round_id == round_id,
                    Prompt.index >= block * size,
                    Prompt.index < (block + 1) * size,
                )
                .order_by(Prompt.index)
            )
        )
        round_index = rnd.index
    ctx.backend.load(policy.path)
    params = SamplingParams(
        n=gen.samples_per_prompt,
        temperature=gen.temperature,
        top_p=gen.top_p,
        max_new_tokens=gen.max_new_tokens,
        seed=derive_seed(ctx.cfg.run.seed, round_index, block),
    )
    outputs = ctx.backend.generate([p.text for p in prompts], params)
    rows = [
        dict(
            round_id=round_id,
            prompt_id=prompt.id,
            sample_index=k,
            checkpoint_id=policy.id,
            text=sample.text,
            token_ids=sample.token_ids,
            num_tokens=len(sample.token_ids),
            logprob=sample.logprob,
            finish_reason=sample.finish_reason,
        )
        for prompt, samples in zip(prompts, outputs, strict=True)
        for k, sample in enumerate(samples)
    ]
    with transaction(ctx.sessions) as s:
        added = queries.insert_ignore(s, Response, rows)
    commit_point("generating")
    return added


def missing_blocks(ctx: Context, round_id: int) -> dict[int, int]:
    """Insert the round's prompts; return {block: responses it will add} for unfinished blocks."""
    ensure_prompts(ctx, round_id)
    k, size = ctx.cfg.generation.samples_per_prompt, ctx.cfg.generation.prompts_per_batch
    with ctx.sessions() as s:
        missing = queries.prompts_missing_responses(s, round_id, k)
    blocks: dict[int, int] = {}
    for p in missing:
        blocks[p.index // size] = blocks.get(p.index // size, 0) + k
    return dict(sorted(blocks.items()))


def generate_round(ctx: Context, round_id: int) -> None:
    """Generate the round's missing responses, block by block."""
    blocks = missing_blocks(ctx, round_id)
    if not blocks:
        return
    with ctx.reporter.bar("generating", sum(blocks.values())) as advance:
        for block, responses in blocks.items():
            generate_block(ctx, round_id, block)
            advance(responses)


# -- judge --------------------------------------------------------------------------------


def judge_responses(ctx: Context, pairs: list[tuple[Response, Prompt]]) -> None:
    """Judge these responses and store one judgment each (failures stored as failed)."""
    items = [JudgeItem(TaskPrompt(p.text, p.answer), r.text) for r, p in pairs]
    verdicts = ctx.judge.judge(items)
    rows = [
        dict(
            response_id=r.id,
            judge=ctx.judge.name,
            repeat=0,
            status=v.status,
            score=v.score,
            critique=v.critique,
            trace=v.trace,
            error=v.error,
            latency_s=v.latency_s,
            tokens=v.tokens,
            cost=v.cost,
        )
        for (r, _), v in zip(pairs, verdicts, strict=True)
    ]
    with transaction(ctx.sessions) as s:
        queries.insert_ignore(s, Judgment, rows)
    commit_point("judging")


def missing_judgments(ctx: Context, round_id: int) -> list[list[tuple[Response, Prompt]]]:
    """The round's responses without a judgment, in chunks of one commit each."""
    with ctx.sessions() as s:
        todo = queries.responses_missing_judgment(s, round_id, ctx.judge.name)
    # One judge chunk per generation block's worth of responses.
    size = ctx.cfg.generation.prompts_per_batch * ctx.cfg.generation.samples_per_prompt
    return [todo[i : i + size] for i in range(0, len(todo), size)]


def judge_response_ids(ctx: Context, round_id: int, response_ids: list[int]) -> int:
    """Judge those of these responses that have no judgment yet; returns how many were judged.

    A chunk delivered twice judges nothing the second time.
    """
    with ctx.sessions() as s:
        todo = queries.responses_missing_judgment(
            s, round_id, ctx.judge.name, response_ids=response_ids
        )
    if todo:
        judge_responses(ctx, todo)
    return len(todo)


def judge_round(ctx: Context, round_id: int) -> None:
    """Judge every response of the round that has no judgment yet."""
    chunks = missing_judgments(ctx, round_id)
    with ctx.reporter.bar("judging", sum(len(c) for c in chunks)) as advance:
        for chunk in chunks:
            judge_responses(ctx, chunk)
            advance(len(chunk))


# -- pair ---------------------------------------------------------------------------------


def pair_round(ctx: Context, round_id: int) -> None:
    """Build the round's pairs from its judgments (a pure function of the store)."""
    cfg = ctx.cfg.pairing
    with ctx.sessions() as s:
        rnd = _round(s, round_id)
        scored = queries.scored_responses(s, round_id, ctx.judge.name)
        round_index = rnd.index
    builder = PAIR_BUILDERS[cfg.builder]
    choices = builder(scored, cfg.max_pairs_per_prompt, derive_seed(ctx.cfg.run.seed, round_index))
    rows = [
        dict(
            round_id=round_id,
            prompt_id=c.prompt_id,
            chosen_id=c.chosen_id,
            rejected_id=c.rejected_id,
            chosen_score=c.chosen_score,
            rejected_score=c.rejected_score,
            margin=c.margin,
            weight=1.0,
            builder=cfg.builder,
        )
        for c in choices
    ]
    size = ctx.cfg.generation.prompts_per_batch
    for i in range(0, len(rows), size):
        with transaction(ctx.sessions) as s:
            queries.insert_ignore(s, Pair, rows[i : i + size])
        commit_point("pairing")
    scores = [r.score for r in scored]
    with transaction(ctx.sessions) as s:
        values = {"pairs": float(len(rows)), "judged": float(len(scored))}
        if scores:
            values["mean_score"] = sum(scores) / len(scores)
        queries.insert_ignore(s, Metric, _metrics(ctx.run_id, round_index, "pair", 0, values))


# -- train --------------------------------------------------------------------------------


def _reference_checkpoint(ctx: Context, s: Session, rnd: Round) -> Checkpoint:
    if ctx.cfg.training.reference == "previous":
        return rnd.policy_checkpoint
    sft = queries.get_checkpoint(s, ctx.run_id, -1)
    assert sft is not None, "the initial checkpoint row is created before any round"
    return sft


def ensure_reference_logprobs(
    ctx: Context, round_id: int, pairs: list[queries.TrainingPair]
) -> tuple[int, dict[int, float]]:
    """Score every paired response under the reference once, store it, and return them all."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.training.logprobs import score_responses

    with ctx.sessions() as s:
        ref = _reference_checkpoint(ctx, s, _round(s, round_id))
        wanted = {p.chosen_id: p for p in pairs} | {p.rejected_id: p for p in pairs}
        have = queries.logprobs_for(s, ref.id, wanted)
    missing = sorted(set(wanted) - set(have))
    if missing:
        tokenizer = AutoTokenizer.from_pretrained(ref.path)
        model = AutoModelForCausalLM.from_pretrained(ref.path, dtype="float32")
        with ctx.reporter.bar("reference log-probs", len(missing)) as advance:
            for i in range(0, len(missing), LOGPROB_CHUNK):
                ids = missing[i : i + LOGPROB_CHUNK]
                prompt_ids, response_ids = [], []
                for rid in ids:
                    p = wanted[rid]
                    prompt_ids.append(tokenizer(p.prompt)["input_ids"])
                    response_ids.append(
                        p.chosen_token_ids if rid == p.chosen_id else p.rejected_token_ids
                    )
                values = score_responses(
                    model, prompt_ids, response_ids, tokenizer.pad_token_id, batch_size=256
                )
                rows = [
                    dict(response_id=rid, checkpoint_id=ref.id, logprob=v)
                    for rid, v in zip(ids, values, strict=True)
                ]
                with transaction(ctx.sessions) as s:
                    queries.insert_ignore(s, ResponseLogprob, rows)
                commit_point("training")
                have.update(zip(ids, values, strict=True))
                advance(len(ids))
        del model  # only the policy stays in memory while training
    return ref.id, have


def _save_checkpoint(model: object, tokenizer: object, target: Path) -> None:
    """Write a Hugging Face checkpoint atomically: into a temp dir, then rename."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def train_round(ctx: Context, round_id: int) -> None:
    """Train the round's policy on its pairs and store the new checkpoint.

    Reference log-probs are computed once (and stored); the optimisation itself restarts from
    the round's policy if interrupted, which reproduces the same weights for the same seed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.training.trainer import PairExample, train_on_pairs

    with ctx.sessions() as s:
        rnd = _round(s, round_id)
        if rnd.output_checkpoint_id is not None:
            return
        round_index, policy = rnd.index, rnd.policy_checkpoint
        pairs = queries.training_pairs(s, round_id)
    _, ref_logps = ensure_reference_logprobs(ctx, round_id, pairs)

    tokenizer = AutoTokenizer.from_pretrained(policy.path)
    model = AutoModelForCausalLM.from_pretrained(policy.path, dtype="float32")
    examples = [
        PairExample(
            prompt_ids=tokenizer(p.prompt)["input_ids"],
            chosen_ids=p.chosen_token_ids,
            rejected_ids=p.rejected_token_ids,
            ref_chosen_logp=ref_logps[p.chosen_id],
            ref_rejected_logp=ref_logps[p.rejected_id],
        )
        for p in pairs
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
    steps = min(cfg.max_steps, cfg.epochs * -(-len(examples) // cfg.batch_size))
    with ctx.reporter.bar(f"training ({len(examples)} pairs)", steps) as advance:

        def on_step(step: int, values: dict[str, float]) -> None:
            buffer.extend(_metrics(ctx.run_id, round_index, "train", step, values))
            advance(1)
            if step % METRIC_FLUSH_STEPS == 0:
                flush()

        train_on_pairs(
            model,
            examples,
            cfg,
            pad_id=tokenizer.pad_token_id,
            seed=derive_seed(ctx.cfg.run.seed, round_index),
            on_step=on_step,
        )
    if buffer:
        flush()

    target = ctx.cfg.run.output_dir.resolve() / "checkpoints" / f"round-{round_index:04d}"
    target.parent.mkdir(parents=True, exist_ok=True)
    _save_checkpoint(model, tokenizer, target)
    with transaction(ctx.sessions) as s:
        queries.insert_ignore(
            s, Checkpoint, [dict(run_id=ctx.run_id, round_index=round_index, path=str(target))]
        )
        ckpt = queries.get_checkpoint(s, ctx.run_id, round_index)
        _round(s, round_id).output_checkpoint_id = ckpt.id
    commit_point("training")


# -- evaluate -----------------------------------------------------------------------------


def heldout_accuracy(ctx: Context, checkpoint_path: str) -> tuple[float, float] | None:
    """Greedy accuracy on the task's held-out prompts and mean response length in tokens.

    None when the task has no held-out prompts (a JSONL file with no `"split": "heldout"` line).
    """
    prompts = ctx.task.heldout_prompts()
    if not prompts:
        return None
    ctx.backend.load(checkpoint_path)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=ctx.cfg.generation.max_new_tokens)
    correct, tokens = 0, 0
    size = ctx.cfg.evaluation.batch_size
    with ctx.reporter.bar("evaluating", len(prompts)) as advance:
        for i in range(0, len(prompts), size):
            batch = prompts[i : i + size]
            outputs = ctx.backend.generate([p.text for p in batch], params)
            for prompt, (sample,) in zip(batch, outputs, strict=True):
                correct += ctx.task.verify(prompt, sample.text)[0]
                tokens += len(sample.token_ids)
            advance(len(batch))
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
        queries.insert_ignore(s, Metric, _metrics(ctx.run_id, round_index, "eval", 0, values))
    commit_point("evaluating")
    return accuracy


def evaluate_round(ctx: Context, round_id: int) -> None:
    """Held-out greedy accuracy of the round's new checkpoint, stored on the round."""
    with ctx.sessions() as s:
        rnd = _round(s, round_id)
        checkpoint_id, round_index = rnd.output_checkpoint_id, rnd.index
    accuracy = evaluate_checkpoint(ctx, checkpoint_id, round_index)
    with transaction(ctx.sessions) as s:
        _round(s, round_id).heldout_accuracy = accuracy


STAGE_FUNCTIONS = {
    "generating": generate_round,
    "judging": judge_round,
    "pairing": pair_round,
    "training": train_round,
    "evaluating": evaluate_round,
}
