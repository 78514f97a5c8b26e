"""The generate stage: the round's prompts, then K samples per prompt from the round's policy
(and, for χPO, samples from the SFT model), block by block."""

from __future__ import annotations

from sqlalchemy import select

from db import queries
from db.engine import transaction
from db.models import Prompt, Response
from selfplay.checkpoints import SFT_ROUND_INDEX
from selfplay.faults import commit_point
from selfplay.generation.base import SamplingParams
from selfplay.stages.context import Context, derive_seed, get_round
from selfplay.stages.samples import response_row, sample_sources
from selfplay.tasks.base import Prompt as TaskPrompt


def insert_prompts(ctx: Context, round_id: int) -> None:
    """Insert the round's train prompts (drawn deterministically from seed and round index)."""
    with transaction(ctx.sessions) as s:
        rnd = get_round(s, round_id)
        prompts = ctx.engines.task.train_prompts(rnd.index, ctx.cfg.task.prompts_per_round)
        rows = [
            dict(
                round_id=round_id,
                index=i,
                text=p.text,
                answer=p.answer,
                messages=p.stored_messages(),
            )
            for i, p in enumerate(prompts)
        ]
        queries.insert_ignore(s, Prompt, rows)


def generate_block(ctx: Context, round_id: int, block: int, source: str = "policy") -> None:
    """Generate and store the samples of one source for every prompt of one block.

    `source` "policy" draws K samples from the round's policy (sample indices 0…K−1);
    "reference" draws generation.reference_samples from the SFT model (indices K…). A block is
    a fixed range of prompt indices, sampled with a seed derived from (run seed, round, block,
    source): re-running a block after a crash reproduces the same samples.
    """
    gen = ctx.cfg.generation
    size = gen.prompts_per_batch
    _, first, n = next(x for x in sample_sources(ctx) if x[0] == source)
    with ctx.sessions() as s:
        rnd = get_round(s, round_id)
        policy = rnd.policy_checkpoint
        if source == "reference":
            policy = queries.get_checkpoint(s, ctx.run_id, SFT_ROUND_INDEX)
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
    backend = ctx.engines.backend
    backend.load(policy.path)
    params = SamplingParams(
        n=n,
        temperature=gen.temperature,
        top_p=gen.top_p,
        max_new_tokens=gen.max_new_tokens,
        seed=derive_seed(ctx.cfg.run.seed, round_index, block, first),
    )
    outputs = backend.generate(
        [TaskPrompt.from_row(p.text, p.answer, p.messages) for p in prompts], params
    )
    rows = [
        response_row(round_id, prompt.id, first + k, policy.id, sample)
        for prompt, samples in zip(prompts, outputs, strict=True)
        for k, sample in enumerate(samples)
    ]
    with transaction(ctx.sessions) as s:
        queries.insert_ignore(s, Response, rows)
    commit_point("generating")


def missing_blocks(ctx: Context, round_id: int) -> dict[tuple[str, int], int]:
    """{(source, block): responses it will add} for the blocks of the round's stored prompts
    that lack samples, the policy's first, then the reference's (χPO). Reads only."""
    size = ctx.cfg.generation.prompts_per_batch
    blocks: dict[tuple[str, int], int] = {}
    for source, first, k in sample_sources(ctx):
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
