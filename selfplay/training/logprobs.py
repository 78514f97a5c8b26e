"""Summed response-token log-probs S_M(y) of (prompt, response) token sequences."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel


def build_batch(
    prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Left-padded prompt+response sequences: input_ids [N,T] (long), attention_mask [N,T]
    (long), response_mask [N,T] (bool, True on response tokens).

    Left padding puts every response at the right edge, so the model only has to produce logits
    for the last max|y|+1 positions. Raises ValueError on mismatched lengths or an empty prompt
    (the first response token needs a token before it to be predicted from).
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if not prompt_ids:
        raise ValueError("empty batch")
    if any(not p for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True))
    n = len(prompt_ids)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        start = width - len(p) - len(r)
        input_ids[i, start:] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[i, start:] = 1
        response_mask[i, width - len(r) :] = True
    return input_ids, attention_mask, response_mask


def _token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[targets] in float32 or wider: logits [N,R,V], targets [N,R] → [N,R]."""
    if logits.dtype in (torch.float32, torch.float64):
        # gather − logsumexp: no second [N,R,V] tensor (log_softmax output) kept for backward.
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    # Half-precision logits: upcast one row at a time instead of the whole [N,R,V] block.
    rows = [
        torch.log_softmax(row.float(), dim=-1).gather(-1, t.unsqueeze(-1)).squeeze(-1)
        for row, t in zip(logits, targets, strict=True)
    ]
    return torch.stack(rows)


def sequence_logprobs(
    model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> Tensor:
    """Summed log-probs of the response tokens, S_M(y): float32 [N] (carries grad if enabled).

    Inputs are [N,T] on the model's device, any padding side: position ids come from the
    attention mask, and logits are computed only from the first column holding a response token.
    """
    t = input_ids.shape[1]
    columns = response_mask.any(dim=0).nonzero()
    span = t - int(columns[0]) if len(columns) else 0  # columns the responses can occupy
    if span == t:
        raise ValueError("a response token in column 0 has no context to be predicted from")
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=span + 1,
        use_cache=False,
    ).logits[:, :-1]  # position j predicts token j+1
    logps = _token_logps(logits, input_ids[:, t - span :])
    # where, not multiply: logits at padding positions are garbage (possibly NaN).
    return torch.where(response_mask[:, t - span :], logps, 0.0).sum(-1)


def score_responses(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    pad_id: int,
    batch_size: int,
) -> list[float]:
    """S_M(y) for each (prompt, response), without grad and with dropout off (eval mode).

    Used to precompute reference log-probs once per round. The model's train/eval mode is
    restored afterwards.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores: list[float] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(prompt_ids), batch_size):
                stop = start + batch_size
                batch = build_batch(prompt_ids[start:stop], response_ids[start:stop], pad_id)
                scores += sequence_logprobs(model, *(x.to(device) for x in batch)).tolist()
    finally:
        model.train(was_training)
    return scores
