import pytest
import torch

from selfplay.training import logprobs
from selfplay.training.logprobs import (
    TokenLogps,
    build_batch,
    build_prompt_groups,
    grouped_logprobs,
    score_responses,
    sequence_logprobs,
)

PAD = 0
PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 3], [1, 4, 4, 11]]
RESPONSES = [[12, 2], [13, 14, 15, 16, 2], [17]]


def hand_logprob(model, prompt: list[int], response: list[int]) -> float:
    """Sum of log p(y_t | x, y_<t), one unpadded sequence, one token at a time."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    total = 0.0
    for t in range(len(prompt), len(prompt) + len(response)):
        total += torch.log_softmax(logits[t - 1], dim=-1)[ids[0, t]].item()
    return total


def test_build_batch_left_pads_and_marks_responses():
    ids, attn, resp = build_batch([[1, 5], [1]], [[6, 2], [7]], PAD)
    assert ids.tolist() == [[1, 5, 6, 2], [PAD, PAD, 1, 7]]
    assert attn.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert resp.tolist() == [[False, False, True, True], [False, False, False, True]]


@pytest.mark.parametrize(
    ("prompts", "responses"),
    [([[1]], [[2], [3]]), ([], []), ([[1], []], [[2], [3]])],
)
def test_build_batch_rejects_bad_input(prompts, responses):
    with pytest.raises(ValueError):
        build_batch(prompts, responses, PAD)


def test_sequence_logprobs_matches_hand_loop(tiny_llama):
    model = tiny_llama()
    ids, attn, resp = build_batch(PROMPTS, RESPONSES, PAD)
    with torch.no_grad():
        got = sequence_logprobs(model, ids, attn, resp)
    assert got.dtype == torch.float32
    want = [hand_logprob(model, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=0)


def test_padding_does_not_change_scores(tiny_llama):
    model = tiny_llama()
    with torch.no_grad():
        batched = sequence_logprobs(model, *build_batch(PROMPTS, RESPONSES, PAD))
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
            alone = sequence_logprobs(model, *build_batch([p], [r], PAD))
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)


def test_right_padding_gives_the_same_scores(tiny_llama):
    model = tiny_llama()
    ids, attn, resp = build_batch(PROMPTS, RESPONSES, PAD)
    # Roll each row's padding from the left edge to the right edge.
    shifts = [-int((a == 0).sum()) for a in attn]
    right = [torch.stack([x[i].roll(s) for i, s in enumerate(shifts)]) for x in (ids, attn, resp)]
    with torch.no_grad():
        torch.testing.assert_close(
            sequence_logprobs(model, *right),
            sequence_logprobs(model, ids, attn, resp),
            atol=1e-5,
            rtol=0,
        )


def test_sequence_logprobs_carries_grad(tiny_llama):
    model = tiny_llama()
    sequence_logprobs(model, *build_batch(PROMPTS, RESPONSES, PAD)).sum().backward()
    assert model.lm_head.weight.grad is not None
    assert torch.isfinite(model.lm_head.weight.grad).all()


def test_score_responses_batches_in_eval_mode(tiny_llama):
    model = tiny_llama(attention_dropout=0.5)
    want = [hand_logprob(model, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    model.train()
    assert hand_logprob(model, PROMPTS[0], RESPONSES[0]) != pytest.approx(want[0])  # dropout on
    scores = score_responses(model, PROMPTS, RESPONSES, PAD, max_tokens_per_batch=12)
    assert scores == pytest.approx(want, abs=1e-5)
    assert model.training  # the caller's mode is restored


GROUPS = [[[12, 2], [7, 8, 9, 2], [3]], [[13, 14, 15, 16, 2]], [[17], [18, 2]]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_grouped_logprobs_match_one_sequence_per_response(tiny_llama, attn):
    model = tiny_llama(attn_implementation=attn)
    with torch.no_grad():
        got = grouped_logprobs(model, build_prompt_groups(PROMPTS, GROUPS, PAD))
    want = [
        [hand_logprob(model, p, r) for r in rs] + [0.0] * (3 - len(rs))
        for p, rs in zip(PROMPTS, GROUPS, strict=True)
    ]
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-5, rtol=0)


def test_build_prompt_groups_positions_restart_after_the_prompt():
    g = build_prompt_groups([[1, 5]], [[[6, 2], [7, 8, 2]]], PAD)
    # Each response's last token is only a target, never fed.
    assert g.input_ids.tolist() == [[1, 5, 6, 7, 8]]
    assert g.position_ids.tolist() == [[0, 1, 2, 2, 3]]
    # The second response (column 4) sees the prompt and itself, not the first response.
    assert g.attention_mask[0, 0, 4].tolist() == [True, True, False, True, True]
    assert g.target.tolist() == [[6, 2, 7, 8, 2]] and g.owner.tolist() == [[0, 0, 1, 1, 1]]
    # Columns within the last span = 4: the last prompt token predicts both first tokens.
    assert g.span == 4 and g.source.tolist() == [[0, 1, 0, 2, 3]]


def test_grouped_logprobs_have_the_gradient_of_separate_sequences(tiny_llama):
    shared, separate = tiny_llama(), tiny_llama()
    weights = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.0, 0.0], [-1.0, 2.0, 0.0]])
    (grouped_logprobs(shared, build_prompt_groups(PROMPTS, GROUPS, PAD)) * weights).sum().backward()
    prompts = [p for p, rs in zip(PROMPTS, GROUPS, strict=True) for _ in rs]
    responses = [r for rs in GROUPS for r in rs]
    flat = torch.tensor(
        [w for ws, rs in zip(weights.tolist(), GROUPS, strict=True) for w in ws[: len(rs)]]
    )
    (sequence_logprobs(separate, *build_batch(prompts, responses, PAD)) * flat).sum().backward()
    for a, b in zip(shared.parameters(), separate.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)


def test_score_responses_shares_prompts_and_keeps_the_order(tiny_llama):
    model = tiny_llama()
    prompts = [p for p, rs in zip(PROMPTS, GROUPS, strict=True) for _ in rs] * 2
    responses = [r for rs in GROUPS for r in rs] * 2
    want = [hand_logprob(model, p, r) for p, r in zip(prompts, responses, strict=True)]
    assert score_responses(
        model, prompts, responses, PAD, max_tokens_per_batch=24
    ) == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("saved", [True, False])
def test_token_logps_gradcheck_across_chunks(monkeypatch, saved):
    monkeypatch.setattr(logprobs, "HEAD_CHUNK", 14)  # 7 vocab → 2 rows per chunk
    if not saved:  # d logits recomputed in the backward, not kept from the forward
        monkeypatch.setattr(logprobs, "HEAD_SAVE_BYTES", 0)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(7, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.tensor([0, 6, 3, 3, 1])
    want = torch.log_softmax(hidden @ weight.T, dim=-1)[torch.arange(5), targets]
    torch.testing.assert_close(TokenLogps.apply(hidden, weight, targets), want)
    assert torch.autograd.gradcheck(lambda h, w: TokenLogps.apply(h, w, targets), (hidden, weight))


@pytest.mark.parametrize("saved", [True, False])
@pytest.mark.parametrize("grouped", [False, True])
def test_fused_head_matches_the_models_own_logits(tiny_llama, monkeypatch, grouped, saved):
    """The hidden-state path (TokenLogps, chunked, d logits kept or recomputed) gives the
    values and gradients of the full-logits path an unknown architecture takes."""
    monkeypatch.setattr(logprobs, "HEAD_CHUNK", 3 * 20)  # 3 tokens per chunk: several
    if not saved:
        monkeypatch.setattr(logprobs, "HEAD_SAVE_BYTES", 0)

    def run(model):
        if grouped:
            out = grouped_logprobs(model, build_prompt_groups(PROMPTS, GROUPS, PAD))
        else:
            out = sequence_logprobs(model, *build_batch(PROMPTS, RESPONSES, PAD))
        (out * torch.linspace(-1, 2, out.numel()).view(out.shape)).sum().backward()
        return out.detach()

    fused, plain = tiny_llama(), tiny_llama()
    assert logprobs._fused_head(fused)
    got = run(fused)
    monkeypatch.setattr(logprobs, "FUSED_HEAD_MODEL_TYPES", frozenset())
    assert not logprobs._fused_head(plain)
    torch.testing.assert_close(got, run(plain), atol=1e-5, rtol=0)
    for (name, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_score_responses_bounds_each_forward_by_the_token_budget(tiny_llama, attn):
    model = tiny_llama(attn_implementation=attn)
    g = torch.Generator().manual_seed(0)
    prompts = [PROMPTS[i % 3] for i in range(12)]
    responses = [torch.randint(3, 20, (n,), generator=g).tolist() for n in range(1, 13)]
    widths = []
    hook = model.model.register_forward_pre_hook(
        lambda _, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    budget = 30
    scores = score_responses(model, prompts, responses, PAD, max_tokens_per_batch=budget)
    hook.remove()
    # Every forward holds at most `budget` tokens, but a row longer than that, which goes alone.
    assert len(widths) > 1
    assert all(rows * width <= budget or rows == 1 for rows, width in widths)
    one_forward = score_responses(model, prompts, responses, PAD, max_tokens_per_batch=10**6)
    want = [hand_logprob(model, p, r) for p, r in zip(prompts, responses, strict=True)]
    assert scores == pytest.approx(want, abs=1e-5)
    assert scores == pytest.approx(one_forward, abs=1e-5)
