"""The revise stage (critique → revise): the round's policy rewrites planned responses given
their critique; the revisions are stored as responses of the round (`revises_id` → the
original), for the judge stage to judge next.

What the policy is asked: with a chat template (selfplay.rendering) a conversation, the
prompt's turns, the original response as an assistant turn and `revise.critique_turn` (the
critique) as the user's next turn; without one, `revise.prompt_template` as plain text."""

from __future__ import annotations

import random

from sqlalchemy import select

from db import queries
from db.engine import transaction
from db.models import Prompt, Response
from selfplay.config import ReviseConfig
from selfplay.faults import commit_point
from selfplay.generation.base import SamplingParams
from selfplay.rendering import PromptRenderer
from selfplay.stages.context import Context, derive_seed, get_round
from selfplay.stages.samples import response_row, sample_sources
from selfplay.tasks.base import Prompt as TaskPrompt

REVISE_SEED_SALT = 0x5E715E  # keeps revision seeds apart from the generation blocks'


def revision_sample_index(ctx: Context, original_index: int) -> int:
    """The sample index a revision of policy sample `original_index` is stored under: after
    the policy's K and the reference's samples, so no other sample can collide with it."""
    _, first, n = sample_sources(ctx)[-1]
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
    name = ctx.engines.judge_name
    with ctx.sessions() as s:
        round_index = get_round(s, round_id).index
        scored = queries.scored_responses(s, round_id, name)
        samples = [r for r in scored if r.sample_index < k and r.revises_id is None]
        notes = queries.critiques(s, [r.response_id for r in samples], name)
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


def revision_request(
    cfg: ReviseConfig, prompt: TaskPrompt, response: str, critique: str, chat: bool
) -> TaskPrompt:
    """What the policy is asked to revise `response` to `prompt`: with `chat` (the policy has a
    chat template) the conversation prompt + response (assistant) + critique turn (user), else
    the plain text of `cfg.prompt_template`."""
    if chat:
        turns = [(m["role"], m["content"]) for m in prompt.chat()]
        ask = cfg.critique_turn.format(critique=critique)
        return TaskPrompt.conversation([*turns, ("assistant", response), ("user", ask)])
    return TaskPrompt(
        cfg.prompt_template.format(prompt=prompt.text, response=response, critique=critique)
    )


def revise_round(ctx: Context, round_id: int) -> None:
    """Generate and store the round's planned revisions (when revise.enabled).

    The plan is cut into fixed chunks of generation.prompts_per_batch, each sampled with a seed
    derived from (run seed, round, chunk) and committed at once; a re-run skips the chunks
    already stored, so a crash at any point resumes with the same revisions and no duplicates.
    """
    cfg, gen = ctx.cfg.revise, ctx.cfg.generation
    if not cfg.enabled:
        return
    plan = revision_plan(ctx, round_id)
    size = gen.prompts_per_batch
    chunks = [plan[i : i + size] for i in range(0, len(plan), size)]
    with ctx.sessions() as s:
        rnd = get_round(s, round_id)
        round_index, policy = rnd.index, rnd.policy_checkpoint
        done = queries.revised_ids(s, round_id)
        asked = {
            p.id: TaskPrompt.from_row(p.text, p.answer, p.messages)
            for p in s.scalars(select(Prompt).where(Prompt.id.in_({r.prompt_id for r, _ in plan})))
        }
    # A chunk commits at once: it is done when its revisions are stored.
    todo = [
        (c, chunk)
        for c, chunk in enumerate(chunks)
        if any(r.response_id not in done for r, _ in chunk)
    ]
    if not todo:
        return
    backend = ctx.engines.backend
    backend.load(policy.path)
    chat = PromptRenderer.load(policy.path, ctx.cfg.model.chat_template).templated
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
                revision_request(cfg, asked[r.prompt_id], r.text, critique, chat)
                for r, critique in chunk
            ]
            outputs = backend.generate(asks, params)
            rows = [
                response_row(
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
