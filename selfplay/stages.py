"""The stage functions of a round: generate, judge, revise, pair, train, evaluate.

Each computes its missing work from the store, does it in chunks and commits each chunk, so a
stage killed at any point and run again finishes the same work with no duplicate rows (unique
keys make a repeated insert a no-op). The embedded driver calls these in-process; the
distributed executor runs the same functions as Celery tasks.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.engine import transaction
from db.models import Checkpoint, Judgment, Metric, Pair, Prompt, Response, ResponseLogprob, Round
from selfplay.config import SelfplayConfig
from selfplay.devices import default_device
from selfplay.faults import commit_point
from selfplay.generation import make_backend
from selfplay.generation.base import GenerationBackend, Sample, SamplingParams
from selfplay.judges import Judge, JudgeEnv, JudgeItem, PolicyHandle, make_judge, safe_judge
from selfplay.judges.meta_eval import Checked, position_bias_rate, verifier_agreement
from selfplay.pairing import PAIR_BUILDERS, PairParams, replay_choice, revision_pairs
from selfplay.progress import Reporter
from selfplay.tasks import make_task
from selfplay.tasks.base import Prompt as TaskPrompt
from selfplay.tasks.base import Task
from selfplay.training.losses import LOSSES

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
    judge_env: JudgeEnv | None = None
    _backend: GenerationBackend | None = field(default=None, repr=False)

    @property
    def backend(self) -> GenerationBackend:
        """The generation engine, created on first use and kept loaded."""
        if self._backend is None:
            self._backend = make_backend(self.cfg.generation)
        return self._backend

    def close(self) -> None:
        """Shut the generation engine down if it runs processes of its own (vLLM's engine
        core, SGLang, a server selfplay started); a process left with them hangs at exit.
        Close the judge too if it holds resources (the api judge's HTTP client and loop)."""
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()
        self._backend = None
        close_judge = getattr(self.judge, "close", None)
        if close_judge is not None:
            close_judge()


def make_context(
    cfg: SelfplayConfig, sessions: sessionmaker[Session], run_id: int, reporter: Reporter
) -> Context:
    """The run's Context: its task, and its judge built with a handle on the run's policy."""
    task = make_task(cfg.task, cfg.run.seed)
    env = JudgeEnv(
        task=task,
        seed=cfg.run.seed,
        sessions=sessions,
        policy=PolicyHandle(lambda: ctx.backend),
    )
    ctx = Context(
        cfg=cfg,
        sessions=sessions,
        run_id=run_id,
        task=task,
        judge=make_judge(cfg.judge, env),
        reporter=reporter,
        judge_env=env,
    )
    return ctx


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


def _sources(ctx: Context) -> list[tuple[str, int, int]]:
    """(source, first sample index, samples per prompt): the policy's K, then the reference's."""
    gen = ctx.cfg.generation
    out = [("policy", 0, gen.samples_per_prompt)]
    if gen.reference_samples:
        out.append(("reference", gen.samples_per_prompt, gen.reference_samples))
    return out


def _response_row(
    round_id: int,
    prompt_id: int,
    sample_index: int,
    checkpoint_id: int,
    sample: Sample,
    revises_id: int | None = None,
) -> dict:
    """A `responses` row for a generated sample."""
    return dict(
        round_id=round_id,
        prompt_id=prompt_id,
        sample_index=sample_index,
        checkpoint_id=checkpoint_id,
        text=sample.text,
        token_ids=sample.token_ids,
        num_tokens=len(sample.token_ids),
        logprob=sample.logprob,
        finish_reason=sample.finish_reason,
        revises_id=revises_id,
    )


def generate_block(ctx: Context, round_id: int, block: int, source: str = "policy") -> int:
    """Generate the samples of one source for every prompt of one block; returns rows stored.

    `source` "policy" draws K samples from the round's policy (sample indices 0…K−1);
    "reference" draws generation.reference_samples from the SFT model (indices K…). A block is
    a fixed range of prompt indices, sampled with a seed derived from (run seed, round, block,
    source): re-running a block after a crash reproduces the same samples.
    """
    gen = ctx.cfg.generation
    size = gen.prompts_per_batch
    _, first, n = next(x for x in _sources(ctx) if x[0] == source)
    with ctx.sessions() as s:
        rnd = _round(s, round_id)
        policy = rnd.policy_checkpoint
        if source == "reference":
            policy = queries.get_checkpoint(s, ctx.run_id, -1)
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
        n=n,
        temperature=gen.temperature,
        top_p=gen.top_p,
        max_new_tokens=gen.max_new_tokens,
        seed=derive_seed(ctx.cfg.run.seed, round_index, block, first),
    )
    outputs = ctx.backend.generate([p.text for p in prompts], params)
    rows = [
        _response_row(round_id, prompt.id, first + k, policy.id, sample)
        for prompt, samples in zip(prompts, outputs, strict=True)
        for k, sample in enumerate(samples)
    ]
    with transaction(ctx.sessions) as s:
        added = queries.insert_ignore(s, Response, rows)
    commit_point("generating")
    return added


def missing_blocks(ctx: Context, round_id: int) -> dict[tuple[str, int], int]:
    """Insert the round's prompts; return {(source, block): responses it will add} for the
    unfinished blocks, the policy's samples first, then the reference's (XPO)."""
    ensure_prompts(ctx, round_id)
    size = ctx.cfg.generation.prompts_per_batch
    blocks: dict[tuple[str, int], int] = {}
    for source, first, k in _sources(ctx):
        with ctx.sessions() as s:
            missing = queries.prompts_missing_responses(s, round_id, k, first)
        for p in missing:
            key = (source, p.index // size)
            blocks[key] = blocks.get(key, 0) + k
    return blocks


def generate_round(ctx: Context, round_id: int) -> None:
    """Generate the round's missing responses, block by block, policy samples first."""
    blocks = missing_blocks(ctx, round_id)
    if not blocks:
        return
    with ctx.reporter.bar("generating", sum(blocks.values())) as advance:
        for (source, block), responses in blocks.items():
            generate_block(ctx, round_id, block, source)
            advance(responses)


# -- judge --------------------------------------------------------------------------------


def _point_policy(ctx: Context, round_id: int) -> None:
    """Aim the judges' policy handle at this round's policy checkpoint (the `self` judge)."""
    if ctx.judge_env is None or ctx.judge_env.policy is None:
        return
    with ctx.sessions() as s:
        ctx.judge_env.policy.path = _round(s, round_id).policy_checkpoint.path


def _siblings(ctx: Context, pairs: list[tuple[Response, Prompt]]) -> dict[int, list[str]]:
    """For judges that score against the other responses to the same prompt: response id →
    the texts of its siblings (the prompt's other policy samples)."""
    prompt_ids = {p.id for _, p in pairs}
    k = ctx.cfg.generation.samples_per_prompt
    with ctx.sessions() as s:
        rows = s.execute(
            select(Response.id, Response.prompt_id, Response.text).where(
                Response.prompt_id.in_(prompt_ids), Response.sample_index < k
            )
        ).all()
    by_prompt: dict[int, list[tuple[int, str]]] = {}
    for rid, pid, text in rows:
        by_prompt.setdefault(pid, []).append((rid, text))
    return {r.id: [text for rid, text in by_prompt.get(p.id, []) if rid != r.id] for r, p in pairs}


def judge_responses(ctx: Context, pairs: list[tuple[Response, Prompt]], repeat: int = 0) -> None:
    """Judge these responses and store one judgment each (failures stored as failed).

    A judge that raises, or returns the wrong number of verdicts, fails the whole chunk as
    recorded failures: the loop goes on (a plug-in's bug never stops a run).
    """
    siblings = _siblings(ctx, pairs) if getattr(ctx.judge, "needs_siblings", False) else {}
    items = [
        JudgeItem(
            TaskPrompt(p.text, p.answer),
            r.text,
            {"siblings": siblings[r.id], "repeat": repeat} if siblings else {"repeat": repeat},
        )
        for r, p in pairs
    ]
    verdicts = safe_judge(ctx.judge, items)
    rows = [
        dict(
            response_id=r.id,
            judge=ctx.judge.name,
            repeat=repeat,
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


def missing_judgments(
    ctx: Context, round_id: int
) -> list[tuple[int, list[tuple[Response, Prompt]]]]:
    """(repeat, chunk) of the round's responses without that repeat's judgment; one commit each."""
    # One judge chunk per generation block's worth of responses.
    size = ctx.cfg.generation.prompts_per_batch * ctx.cfg.generation.samples_per_prompt
    chunks = []
    for repeat in range(ctx.cfg.judge.repeats):
        with ctx.sessions() as s:
            todo = queries.responses_missing_judgment(s, round_id, ctx.judge.name, repeat)
        chunks += [(repeat, todo[i : i + size]) for i in range(0, len(todo), size)]
    return chunks


def judge_response_ids(
    ctx: Context, round_id: int, response_ids: list[int], repeat: int = 0
) -> int:
    """Judge those of these responses that have no judgment (this repeat) yet; returns how many
    were judged. A chunk delivered twice judges nothing the second time.
    """
    with ctx.sessions() as s:
        todo = queries.responses_missing_judgment(
            s, round_id, ctx.judge.name, repeat, response_ids=response_ids
        )
    if todo:
        _point_policy(ctx, round_id)
        judge_responses(ctx, todo, repeat)
    return len(todo)


def judge_round(ctx: Context, round_id: int) -> None:
    """Judge every response of the round that has no judgment yet (each configured repeat)."""
    chunks = missing_judgments(ctx, round_id)
    _point_policy(ctx, round_id)
    with ctx.reporter.bar("judging", sum(len(c) for _, c in chunks)) as advance:
        for repeat, chunk in chunks:
            judge_responses(ctx, chunk, repeat)
            advance(len(chunk))


# -- revise -------------------------------------------------------------------------------

REVISE_SEED_SALT = 0x5E715E  # keeps revision seeds apart from the generation blocks'


def revision_sample_index(ctx: Context, original_index: int) -> int:
    """The sample index a revision of policy sample `original_index` is stored under: after
    the policy's K and the reference's samples, so no other sample can collide with it."""
    _, first, n = _sources(ctx)[-1]
    return first + n + original_index


def revision_plan(ctx: Context, round_id: int) -> list[tuple[queries.ScoredResponse, str]]:
    """The round's responses to revise, with their critiques, in a fixed (seeded) order.

    Candidates are policy samples (not reference samples, not revisions) with a successful
    judgment that has a critique; with revise.only_failed, only those scoring below
    revise.pass_score (unset: below the best score of the round's policy samples). A seeded
    shuffle picks at most revise.max_per_round.

    The plan is a function of the round's judgments of its samples, which never change once
    the judging stage is done: a re-run plans the same revisions.
    """
    cfg, k = ctx.cfg.revise, ctx.cfg.generation.samples_per_prompt
    with ctx.sessions() as s:
        round_index = _round(s, round_id).index
        scored = queries.scored_responses(s, round_id, ctx.judge.name)
        samples = [r for r in scored if r.sample_index < k and r.revises_id is None]
        notes = queries.critiques(s, [r.response_id for r in samples], ctx.judge.name)
    if not samples:
        return []
    passing = cfg.pass_score if cfg.pass_score is not None else max(r.score for r in samples)
    candidates = [
        (r, notes[r.response_id])
        for r in samples
        if r.response_id in notes and (not cfg.only_failed or r.score < passing)
    ]
    random.Random(derive_seed(ctx.cfg.run.seed, round_index, REVISE_SEED_SALT)).shuffle(candidates)
    return candidates[: cfg.max_per_round]


def revise_round(ctx: Context, round_id: int) -> None:
    """Critique → revise (when revise.enabled): the round's policy rewrites the planned
    responses given their critique, the revisions are stored as responses of the round
    (`revises_id` → the original) and judged by the run's judge.

    The plan is cut into fixed chunks of generation.prompts_per_batch, each sampled with a seed
    derived from (run seed, round, chunk) and committed at once; a re-run skips the chunks
    already stored and judges what is unjudged, so a crash at any point resumes with the same
    revisions and no duplicates.
    """
    cfg, gen = ctx.cfg.revise, ctx.cfg.generation
    if not cfg.enabled:
        return
    plan = revision_plan(ctx, round_id)
    size = gen.prompts_per_batch
    chunks = [plan[i : i + size] for i in range(0, len(plan), size)]
    with ctx.sessions() as s:
        rnd = _round(s, round_id)
        round_index, policy = rnd.index, rnd.policy_checkpoint
        done = queries.revised_ids(s, round_id)
        prompts = {
            p.id: p
            for p in s.scalars(select(Prompt).where(Prompt.id.in_({r.prompt_id for r, _ in plan})))
        }
    # A chunk commits at once: it is done when its revisions are stored.
    todo = [
        (c, chunk)
        for c, chunk in enumerate(chunks)
        if any(r.response_id not in done for r, _ in chunk)
    ]
    if todo:
        ctx.backend.load(policy.path)
    with ctx.reporter.bar("revising", sum(len(chunk) for _, chunk in todo)) as advance:
        for c, chunk in todo:
            params = SamplingParams(
                n=1,
                temperature=cfg.temperature,
                top_p=gen.top_p,
                max_new_tokens=cfg.max_new_tokens or gen.max_new_tokens,
                seed=derive_seed(ctx.cfg.run.seed, round_index, REVISE_SEED_SALT, c),
            )
            asks = [
                cfg.prompt_template.format(
                    prompt=prompts[r.prompt_id].text,
                    response=r.text,
                    critique=critique,
                )
                for r, critique in chunk
            ]
            outputs = ctx.backend.generate(asks, params)
            rows = [
                _response_row(
                    round_id,
                    r.prompt_id,
                    revision_sample_index(ctx, r.sample_index),
                    policy.id,
                    sample,
                    revises_id=r.response_id,
                )
                for (r, _), (sample,) in zip(chunk, outputs, strict=True)
            ]
            with transaction(ctx.sessions) as s:
                queries.insert_ignore(s, Response, rows)
            commit_point("revising")
            advance(len(chunk))
    # After the judging stage the round's only unjudged responses are its new revisions.
    judge_round(ctx, round_id)


# -- pair ---------------------------------------------------------------------------------


def judge_eval(ctx: Context, round_id: int, scored: list[queries.ScoredResponse]) -> None:
    """Store the round's judge meta-evaluation (metrics of stage `judge_eval`): the failed
    share of judgments; on a verifiable task, the judge's agreement with the verifier over the
    first `judge.meta_eval_prompts` prompts; for a pairwise judge, its position-bias rate."""
    n_prompts = ctx.cfg.judge.meta_eval_prompts
    with ctx.sessions() as s:
        round_index = _round(s, round_id).index
        counts = queries.judgment_status_counts(s, round_id, ctx.judge.name)
        prompts = {
            p.id: p
            for p in s.scalars(
                select(Prompt).where(Prompt.round_id == round_id, Prompt.index < n_prompts)
            )
        }
        traces = queries.judgment_traces(s, round_id, ctx.judge.name, list(prompts))
    values: dict[str, float] = {}
    total = sum(counts.values())
    if total:
        values["failed_rate"] = counts.get("failed", 0) / total
    if ctx.cfg.judge.name != "verifier":
        checked = [
            Checked(
                r.prompt_id, r.score, ctx.task.verify(_task_prompt(prompts[r.prompt_id]), r.text)[0]
            )
            for r in scored
            if r.prompt_id in prompts and prompts[r.prompt_id].answer is not None
        ]
        agreement, n_pairs = verifier_agreement(checked)
        if agreement is not None:
            values |= {"verifier_agreement": agreement, "agreement_pairs": float(n_pairs)}
    bias, n_comparisons = position_bias_rate(traces)
    if bias is not None:
        values |= {"position_bias_rate": bias, "comparisons": float(n_comparisons)}
    with transaction(ctx.sessions) as s:
        queries.insert_ignore(s, Metric, _metrics(ctx.run_id, round_index, "judge_eval", 0, values))


def _task_prompt(p: Prompt) -> TaskPrompt:
    return TaskPrompt(p.text, p.answer)


def pair_round(ctx: Context, round_id: int) -> None:
    """Build the round's pairs from its judgments (a pure function of the store), after
    storing the judge's meta-evaluation."""
    cfg = ctx.cfg.pairing
    with ctx.sessions() as s:
        rnd = _round(s, round_id)
        scored = queries.scored_responses(s, round_id, ctx.judge.name)
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
    # The configured builder sees the round's samples only; revisions pair with their originals.
    samples = [r for r in scored if r.revises_id is None]
    if ctx.cfg.judge.meta_eval_prompts:
        judge_eval(ctx, round_id, samples)
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
    with transaction(ctx.sessions) as s:
        values = {"pairs": float(len(rows)), "judged": float(len(samples))}
        if scores:
            values["mean_score"] = sum(scores) / len(scores)
        if len(samples) < len(scored):
            values["revisions_judged"] = float(len(scored) - len(samples))
            values["revise_pairs"] = float(len(revised))
        queries.insert_ignore(s, Metric, _metrics(ctx.run_id, round_index, "pair", 0, values))


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


# -- train --------------------------------------------------------------------------------


def _checkpoint_for(ctx: Context, s: Session, rnd: Round, source: str) -> Checkpoint:
    """The checkpoint a log-prob source names: "previous" (π_t, the round's policy) or "sft"."""
    if source == "previous":
        return rnd.policy_checkpoint
    sft = queries.get_checkpoint(s, ctx.run_id, -1)
    assert sft is not None, "the initial checkpoint row is created before any round"
    return sft


def logprob_sources(cfg: SelfplayConfig) -> dict[str, str]:
    """Which checkpoint fills each log-prob slot of the loss: {"ref": …, "prev": …}."""
    spec = LOSSES[cfg.training.loss]
    out = {}
    if spec.reference is not None:
        out["ref"] = cfg.training.reference if spec.reference == "config" else spec.reference
    if spec.needs_prev:
        out["prev"] = "previous"
    return out


def ensure_logprobs(
    ctx: Context, round_id: int, source: str, pairs: list[queries.TrainingPair]
) -> dict[int, float]:
    """Score every paired response under a source's checkpoint once, store, and return them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.training.logprobs import score_responses

    with ctx.sessions() as s:
        ckpt = _checkpoint_for(ctx, s, _round(s, round_id), source)
        wanted = {p.chosen_id: p for p in pairs} | {p.rejected_id: p for p in pairs}
        have = queries.logprobs_for(s, ckpt.id, wanted)
    missing = sorted(set(wanted) - set(have))
    if missing:
        tokenizer = AutoTokenizer.from_pretrained(ckpt.path)
        model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype="float32")
        model.to(default_device())
        label = "reference log-probs" if source == "sft" else "π_t log-probs"
        with ctx.reporter.bar(label, len(missing)) as advance:
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
                    dict(response_id=rid, checkpoint_id=ckpt.id, logprob=v)
                    for rid, v in zip(ids, values, strict=True)
                ]
                with transaction(ctx.sessions) as s:
                    queries.insert_ignore(s, ResponseLogprob, rows)
                commit_point("training")
                have.update(zip(ids, values, strict=True))
                advance(len(ids))
        del model  # only the policy stays in memory while training
    return have


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
    from transformers import AutoTokenizer

    from selfplay.training.trainer import (
        PairExample,
        load_trainable,
        merged_for_saving,
        planned_steps,
        train_on_pairs,
    )

    with ctx.sessions() as s:
        rnd = _round(s, round_id)
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
    model = load_trainable(policy.path, ctx.cfg.training, default_device())
    examples = [
        PairExample(
            prompt_ids=tokenizer(p.prompt)["input_ids"],
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
    steps = planned_steps(len(examples), cfg)
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
    _save_checkpoint(merged_for_saving(model), tokenizer, target)
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


def guard_metrics(ctx: Context, round_id: int) -> dict[str, float] | None:
    """Overoptimisation guards on one sample per held-out prompt from the round's new policy.

    Stores (stage "guard", once per round): kl_sft, a Monte-Carlo estimate of
    KL(π_new ‖ π_sft) = E_y~π_new[S_new(y) − S_sft(y)] (nats per response); proxy_score, the
    training judge's mean score of the samples; gold_score, the task verifier's accuracy on the
    same samples; proxy_gold_gap = proxy − gold (Gao et al. 2023: a growing gap is the judge
    being gamed); sampled_mean_tokens. None when disabled or without held-out prompts.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.training.logprobs import score_responses

    prompts = ctx.task.heldout_prompts()
    if not ctx.cfg.guards.heldout_samples or not prompts:
        return None
    with ctx.sessions() as s:
        rnd = _round(s, round_id)
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
        sft_path = queries.get_checkpoint(s, ctx.run_id, -1).path
    ctx.backend.load(new_path)
    params = SamplingParams(
        n=1,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=ctx.cfg.generation.max_new_tokens,
        seed=derive_seed(ctx.cfg.run.seed, round_index, 1 << 20),
    )
    size = ctx.cfg.evaluation.batch_size
    samples = []
    for i in range(0, len(prompts), size):
        batch = prompts[i : i + size]
        samples += [out[0] for out in ctx.backend.generate([p.text for p in batch], params)]
    gold = [ctx.task.verify(p, y.text)[0] for p, y in zip(prompts, samples, strict=True)]
    verdicts = safe_judge(
        ctx.judge, [JudgeItem(p, y.text) for p, y in zip(prompts, samples, strict=True)]
    )
    proxy = [v.score for v in verdicts if v.status == "ok" and v.score is not None]

    tokenizer = AutoTokenizer.from_pretrained(sft_path)
    sft = AutoModelForCausalLM.from_pretrained(sft_path, dtype="float32").to(default_device())
    ref = score_responses(
        sft,
        [tokenizer(p.text)["input_ids"] for p in prompts],
        [y.token_ids for y in samples],
        tokenizer.pad_token_id,
        batch_size=256,
    )
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
        queries.insert_ignore(s, Metric, _metrics(ctx.run_id, round_index, "guard", 0, values))
    commit_point("evaluating")
    return values


def evaluate_round(ctx: Context, round_id: int) -> None:
    """Held-out greedy accuracy of the round's new checkpoint, stored on the round, then the
    overoptimisation guard metrics."""
    with ctx.sessions() as s:
        rnd = _round(s, round_id)
        checkpoint_id, round_index = rnd.output_checkpoint_id, rnd.index
    accuracy = evaluate_checkpoint(ctx, checkpoint_id, round_index)
    with transaction(ctx.sessions) as s:
        _round(s, round_id).heldout_accuracy = accuracy
    guard_metrics(ctx, round_id)


STAGE_FUNCTIONS = {
    "generating": generate_round,
    "judging": judge_round,
    "revising": revise_round,
    "pairing": pair_round,
    "training": train_round,
    "evaluating": evaluate_round,
}
