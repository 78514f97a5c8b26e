"""Where a round's samples are stored: their sources (the policy's K, the reference's, then
the revisions) and their `responses` rows; shared by the generate and revise stages."""

from __future__ import annotations

from selfplay.generation.base import Sample
from selfplay.stages.context import Context


def sample_sources(ctx: Context) -> list[tuple[str, int, int]]:
    """(source, first sample index, samples per prompt): the policy's K, then the reference's."""
    gen = ctx.cfg.generation
    out = [("policy", 0, gen.samples_per_prompt)]
    if gen.reference_samples:
        out.append(("reference", gen.samples_per_prompt, gen.reference_samples))
    return out


def response_row(
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
