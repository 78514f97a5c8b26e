"""The generate stage: prompts stored once, blocks computed from the store, samples resumable."""

from __future__ import annotations

from sqlalchemy import func, select

from db.models import Prompt, Response
from selfplay.stages.generate import generate_block, generate_round, insert_prompts, missing_blocks


def test_missing_blocks_reads_and_generation_resumes_block_by_block(round_store):
    store = round_store(generation={"reference_samples": 1})
    ctx = store.context()
    try:
        assert missing_blocks(ctx, store.round_id) == {}  # a read: it inserts no prompts
        insert_prompts(ctx, store.round_id)
        insert_prompts(ctx, store.round_id)  # idempotent
        with store.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Prompt)) == 8
        # 8 prompts in blocks of 4: K = 2 policy samples each, then 1 from the SFT model.
        assert missing_blocks(ctx, store.round_id) == {
            ("policy", 0): 8,
            ("policy", 1): 8,
            ("reference", 0): 4,
            ("reference", 1): 4,
        }
        for _ in range(2):  # a block delivered twice stores its rows once
            generate_block(ctx, store.round_id, 0)
            with store.sessions() as s:
                assert s.scalar(select(func.count()).select_from(Response)) == 8
        assert set(missing_blocks(ctx, store.round_id)) == {
            ("policy", 1),
            ("reference", 0),
            ("reference", 1),
        }
        generate_round(ctx, store.round_id)
        assert missing_blocks(ctx, store.round_id) == {}
        with store.sessions() as s:
            indices = s.scalars(select(Response.sample_index)).all()
        assert sorted(set(indices)) == [0, 1, 2] and len(indices) == 8 * 3
    finally:
        ctx.close()


def test_a_block_generated_again_after_its_rows_are_lost_has_the_same_samples(round_store):
    store = round_store()
    texts = []
    for _ in range(2):
        ctx = store.context()  # a fresh process each time
        insert_prompts(ctx, store.round_id)
        generate_block(ctx, store.round_id, 1)
        with store.sessions() as s:
            texts.append(s.scalars(select(Response.text).order_by(Response.id)).all())
            s.query(Response).delete()
            s.commit()
        ctx.close()
    assert texts[0] == texts[1] and len(texts[0]) == 8
