"""Summed response-token log-probs S_M(y) of (prompt, response) token sequences."""

from __future__ import annotations

from typing import NamedTuple

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


class PromptGroups(NamedTuple):
    """Several responses to one prompt per row, the prompt computed once (prefix sharing).

    Row b is left-padded [prompt, y_0, y_1, …]; every response token attends to the prompt and
    to its own response's earlier tokens only, and position ids restart after the prompt for
    each response, so each S_M(y_k) equals that of the unshared sequence prompt + y_k.
    """

    input_ids: Tensor  # [B,T] long
    position_ids: Tensor  # [B,T] long
    attention_mask: Tensor  # [B,1,T,T] bool, True where a query may attend a key
    source: Tensor  # [B,L] long: column, counted within the last `span`, predicting each token
    target: Tensor  # [B,L] long: the response token predicted
    owner: Tensor  # [B,L] long: which response of the row (0..k−1) the token is in; −1: padding
    span: int  # the last `span` columns hold every source
    width: int  # most responses in one row

    def to(self, device: torch.device) -> PromptGroups:
        """The same batch on `device`."""
        moved = {k: v.to(device) for k, v in self._asdict().items() if isinstance(v, Tensor)}
        return self._replace(**moved)


def build_prompt_groups(
    prompt_ids: list[list[int]], responses: list[list[list[int]]], pad_id: int
) -> PromptGroups:
    """One row per prompt holding all of its `responses` (see PromptGroups).

    Raises ValueError on mismatched lengths, an empty batch or an empty prompt.
    """
    if len(prompt_ids) != len(responses):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(responses)} response groups")
    if not prompt_ids:
        raise ValueError("empty batch")
    if any(not p for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    # A response's last token is predicted but predicts nothing and nobody attends to it, so
    # it is a target only and never fed: each response feeds its tokens but the last.
    fed = [[r[:-1] for r in rs] for rs in responses]
    totals = [sum(len(r) for r in rs) for rs in responses]
    tokens = max(totals)
    t = max(len(p) + sum(map(len, f)) for p, f in zip(prompt_ids, fed, strict=True))
    span = max(sum(map(len, f)) for f in fed) + 1  # the fed response tokens and the last prompt
    # Python lists, one tensor per field at the end: per-row tensor writes cost more at this size.
    ids, pos, seg, src, tgt, own = [], [], [], [], [], []
    for p, rs, f, total in zip(prompt_ids, responses, fed, totals, strict=True):
        pad, tail = t - len(p) - sum(map(len, f)), tokens - total
        ids.append([pad_id] * pad + p + [tok for r in f for tok in r])
        pos.append([0] * pad + list(range(len(p))) + [len(p) + j for r in f for j in range(len(r))])
        seg.append([0] * pad + [1] * len(p) + [2 + k for k, r in enumerate(f) for _ in r])
        last = pad + len(p) - 1 - (t - span)  # the last prompt column, in span coordinates
        col, row = last + 1, []
        for r, fr in zip(rs, f, strict=True):  # token j is predicted from token j − 1, token 0
            if r:  # from the last prompt token
                row += [last, *range(col, col + len(fr))]
                col += len(fr)
        src.append(row + [0] * tail)
        tgt.append([tok for r in rs for tok in r] + [pad_id] * tail)
        own.append([k for k, r in enumerate(rs) for _ in r] + [-1] * tail)
    input_ids, position_ids, segment, source, target, owner = (
        torch.tensor(x, dtype=torch.long) for x in (ids, pos, seg, src, tgt, own)
    )
    q, k = segment[:, :, None], segment[:, None, :]
    causal = torch.ones((t, t), dtype=torch.bool).tril()
    # A response sees the prompt and itself; a padding query sees only itself (no empty rows).
    mask = causal & (k != 0) & ((k == 1) | (k == q))
    mask |= torch.eye(t, dtype=torch.bool)
    width = max(len(rs) for rs in responses)
    return PromptGroups(input_ids, position_ids, mask[:, None], source, target, owner, span, width)


def takes_custom_masks(model: PreTrainedModel) -> bool:
    """Whether the model's attention accepts a 4D mask (eager and SDPA do, flash-attention not)."""
    return getattr(model.config, "_attn_implementation", None) in ("eager", "sdpa")


def grouped_logprobs(model: PreTrainedModel, batch: PromptGroups) -> Tensor:
    """S_M(y) of each response of each row: float32 [B, batch.width], 0.0 where a row has fewer
    responses (carries grad if enabled). `batch` is on the model's device."""
    mask = batch.attention_mask
    if model.config._attn_implementation == "eager":  # eager adds the mask to the scores
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.span,
        use_cache=False,
    ).logits  # [B, span, V]
    if logits.dtype in (torch.float32, torch.float64):
        lse = torch.logsumexp(logits, dim=-1)
    else:  # half precision: upcast one row at a time, not the whole [B, span, V] block
        lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
    picked = logits[rows, batch.source, batch.target].to(lse.dtype)
    logps = picked - lse.gather(1, batch.source)  # [B, L]
    valid = batch.owner >= 0
    # where, not multiply: the logits of padding columns are never wanted.
    logps = torch.where(valid, logps, 0.0)
    out = torch.zeros((logits.shape[0], batch.width + 1), dtype=logps.dtype, device=logps.device)
    return out.scatter_add(1, batch.owner + 1, logps)[:, 1:]


RESPONSES_PER_ROW = 4
"""score_responses puts at most this many responses to one prompt in a row (attention over a
row costs its length squared)."""


def score_responses(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    pad_id: int,
    batch_size: int,
) -> list[float]:
    """S_M(y) for each (prompt, response), without grad and with dropout off (eval mode).

    Used to precompute reference log-probs once per round. Responses to the same prompt share
    one forward of it (up to RESPONSES_PER_ROW per row; models whose attention takes no custom
    mask score each response in a row of its own), rows of similar length are batched
    together, about `batch_size` responses per forward. The model's train/eval mode is
    restored afterwards.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if any(not p for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    per_row = RESPONSES_PER_ROW if takes_custom_masks(model) else 1
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompt_ids):
        by_prompt.setdefault(tuple(p), []).append(i)
    rows = [idx[k : k + per_row] for idx in by_prompt.values() for k in range(0, len(idx), per_row)]
    rows.sort(key=lambda r: len(prompt_ids[r[0]]) + sum(len(response_ids[i]) for i in r))
    was_training = model.training
    model.eval()
    scores = [0.0] * len(prompt_ids)
    try:
        with torch.inference_mode():
            start = 0
            while start < len(rows):
                stop, count = start, 0
                while stop < len(rows) and count < batch_size:
                    count += len(rows[stop])
                    stop += 1
                chunk = rows[start:stop]
                start = stop
                if per_row == 1:
                    batch = build_batch(
                        [prompt_ids[r[0]] for r in chunk],
                        [response_ids[r[0]] for r in chunk],
                        pad_id,
                    )
                    values = sequence_logprobs(model, *(x.to(device) for x in batch))[:, None]
                else:
                    groups = build_prompt_groups(
                        [prompt_ids[r[0]] for r in chunk],
                        [[response_ids[i] for i in r] for r in chunk],
                        pad_id,
                    )
                    values = grouped_logprobs(model, groups.to(device))
                for r, row in zip(chunk, values.tolist(), strict=True):
                    for i, v in zip(r, row, strict=False):
                        scores[i] = v
    finally:
        model.train(was_training)
    return scores
