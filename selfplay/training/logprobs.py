"""Summed response-token log-probs S_M(y) of (prompt, response) token sequences."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel
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


FUSED_HEAD_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "phi3", "olmo2", "smollm3"}
)
"""Architectures whose logits are exactly lm_head(final hidden state): no bias, scaling or
softcapping after it. For these, log-probs are computed from the hidden states in chunks
(TokenLogps) and the [N, R, V] logits never exist."""

HEAD_CHUNK = 2**28
"""TokenLogps computes at most this many logits at once (512 MiB in bf16, 1 GiB in float32)."""

HEAD_SAVE_BYTES = 2**34
"""TokenLogps keeps the whole [N, V] d log p / d logits for the backward (one matmul fewer, no
chunked float32 accumulation of the weight's gradient) when it takes at most this many bytes
(16 GiB) and, on a GPU, at most HEAD_SAVE_FREE_FRACTION of the memory PyTorch has not
allocated; otherwise the backward recomputes the logits chunk by chunk."""

HEAD_SAVE_FREE_FRACTION = 0.5


def _keep_d_logits(nbytes: int, device: torch.device) -> bool:
    """Whether a [N, V] block of `nbytes` may be kept for the backward (HEAD_SAVE_BYTES)."""
    if nbytes > HEAD_SAVE_BYTES:
        return False
    if device.type != "cuda":
        return True
    # The allocator's own counters: asking the driver (mem_get_info) would cost a sync.
    total = torch.cuda.get_device_properties(device).total_memory
    return nbytes <= HEAD_SAVE_FREE_FRACTION * (total - torch.cuda.memory_allocated(device))


def _lse_and_picked(logits: Tensor, targets: Tensor, acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """logsumexp of each row of `logits` [c,V] and log softmax at `targets` [c], in `acc`."""
    x = logits.to(acc)
    lse = torch.logsumexp(x, dim=-1)
    return lse, x.gather(1, targets[:, None]).squeeze(1) - lse


def _d_logits(logits: Tensor, lse: Tensor, grad: Tensor, targets: Tensor) -> Tensor:
    """d log softmax(logits)[target] / d logits · grad = (one_hot(target) − softmax) · grad,
    in the logits' dtype: logits [c,V], lse and grad [c] (float32 or wider), targets [c]."""
    softmax = (logits.to(lse.dtype) - lse[:, None]).exp()
    columns = torch.arange(logits.shape[1], device=logits.device)
    one_hot = (columns[None, :] == targets[:, None]).to(lse.dtype)
    return ((one_hot - softmax) * grad[:, None]).to(logits.dtype)


def _lse_and_picked_then_neg_softmax_(
    logits: Tensor, targets: Tensor, acc: torch.dtype
) -> tuple[Tensor, Tensor]:
    """_lse_and_picked, then overwrite `logits` with −softmax (computed in `acc`) in place."""
    lse, picked = _lse_and_picked(logits, targets, acc)
    logits.copy_(-(logits.to(acc) - lse[:, None]).exp())
    return lse, picked


_compiled: dict[str, Callable] = {}


def _kernel(fn: Callable, device: torch.device) -> Callable:
    """`fn` compiled (one fused Triton kernel instead of ~6 passes over a chunk's logits) on
    CUDA when Triton is installed; else `fn` itself. The row count is dynamic, the vocabulary
    static (the kernels specialise on it)."""
    if device.type != "cuda" or importlib.util.find_spec("triton") is None:
        return fn
    if fn.__name__ not in _compiled:
        compiled = torch.compile(fn)

        def rows_dynamic(*args: object) -> object:
            for a in args:
                if isinstance(a, Tensor):
                    torch._dynamo.maybe_mark_dynamic(a, 0)
            return compiled(*args)

        _compiled[fn.__name__] = rows_dynamic
    return _compiled[fn.__name__]


class TokenLogps(torch.autograd.Function):
    """log softmax(hidden @ weightᵀ)[target] per row: hidden [N,H], weight [V,H], targets [N]
    → [N] in float32 (float64 for float64 inputs).

    The [N,V] logits are never upcast as a whole. Without grad (reference scoring) they are
    computed chunk by chunk and only each row's logsumexp is kept. With grad, when N × V
    logits fit HEAD_SAVE_BYTES (and half the free GPU memory), the forward turns them in place
    into d log p / d logits = one_hot(target) − softmax and keeps that for the backward, which
    is then two matmuls; when they do not, the forward keeps the logsumexps and the backward
    recomputes each chunk's logits. On CUDA the elementwise work is compiled (at a 150k
    vocabulary it was most of the step's time). Matmuls run in the inputs' dtype, reductions
    in float32 or wider.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:  # noqa: ANN001
        n, v = hidden.shape[0], weight.shape[0]
        chunk = max(1, HEAD_CHUNK // v)
        acc = torch.promote_types(hidden.dtype, torch.float32)
        out = torch.empty(n, dtype=acc, device=hidden.device)
        lse = torch.empty_like(out)
        grads = any(ctx.needs_input_grad[:2])
        save = grads and _keep_d_logits(n * v * hidden.element_size(), hidden.device)
        logits = hidden @ weight.T if save else None
        fn = _lse_and_picked_then_neg_softmax_ if save else _lse_and_picked
        lse_and_picked = _kernel(fn, hidden.device)
        for s in range(0, n, chunk):
            part = logits[s : s + chunk] if save else hidden[s : s + chunk] @ weight.T
            lse[s : s + chunk], out[s : s + chunk] = lse_and_picked(
                part, targets[s : s + chunk], acc
            )
        if save:  # logits now hold one_hot(target) − softmax
            logits[torch.arange(n, device=targets.device), targets] += 1
            ctx.save_for_backward(hidden, weight, logits)
        else:
            ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.saved_d_logits = chunk, save
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # noqa: ANN001
        if ctx.saved_d_logits:
            return (*TokenLogps._backward_saved(ctx, grad), None)
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        d_hidden = torch.empty_like(hidden) if need_h else None
        # A frozen lm_head (LoRA) needs no [V,H] accumulator.
        d_weight = (
            torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if need_w else None
        )
        grad = grad.to(lse.dtype)
        d_logits_of = _kernel(_d_logits, hidden.device)
        for s in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(s, s + ctx.chunk)
            d_logits = d_logits_of(hidden[rows] @ weight.T, lse[rows], grad[rows], targets[rows])
            if d_hidden is not None:
                d_hidden[rows] = d_logits @ weight
            if d_weight is not None:
                d_weight += (d_logits.T @ hidden[rows]).to(lse.dtype)
        return d_hidden, d_weight.to(weight.dtype) if d_weight is not None else None, None

    @staticmethod
    def _backward_saved(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # noqa: ANN001
        """d_hidden = grad · (D @ weight), d_weight = Dᵀ @ (grad · hidden), D the saved
        d log p / d logits: one matmul each over all N rows."""
        hidden, weight, d_logits = ctx.saved_tensors
        grad = grad.to(torch.promote_types(hidden.dtype, torch.float32))[:, None]
        d_hidden = d_weight = None
        if ctx.needs_input_grad[0]:
            d_hidden = ((d_logits @ weight) * grad).to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            d_weight = (d_logits.T @ (hidden * grad).to(hidden.dtype)).to(weight.dtype)
        return d_hidden, d_weight


def _fused_head(model: PreTrainedModel) -> bool:
    """Whether the model's logits are a plain bias-free projection of its final hidden states
    (FUSED_HEAD_MODEL_TYPES), so that TokenLogps can compute log-probs from them; also through
    a data-parallel wrapper (DistributedDataParallel, or a model `fully_shard`-ed in place)."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    if getattr(inner.config, "model_type", None) not in FUSED_HEAD_MODEL_TYPES:
        return False
    head = inner.get_output_embeddings()
    # e.g. LoRA on the lm_head: let the model compute its logits
    return type(head) is torch.nn.Linear and head.bias is None


def _final_hidden(model: PreTrainedModel, inputs: dict[str, Tensor]) -> Tensor:
    """The decoder's final hidden states [N, T, H] for `inputs`.

    A data-parallel model's own forward must run, for its wrapper's hooks (DDP's backward
    preparation; FSDP's parameter gathers and the gradient reduce-scatter they arm): it runs
    with one position's logits, and a hook on the decoder takes its output. FSDP2 keeps the
    root module's parameters (embeddings, final norm, lm_head) gathered from its forward to its
    backward, so the lm_head weight read after it is the gathered one, and its gradient is
    reduced with the root's.
    """
    decoder = model.get_decoder()
    if not isinstance(model, (DistributedDataParallel, FSDPModule)):
        return decoder(**inputs, use_cache=False).last_hidden_state
    captured: list[Tensor] = []
    handle = decoder.register_forward_hook(
        lambda _module, _args, out: captured.append(out.last_hidden_state)
    )
    try:
        model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[0]


def _picked_logps(
    model: PreTrainedModel,
    inputs: dict[str, Tensor],
    keep: int,
    rows: Tensor,
    cols: Tensor,
    targets: Tensor,
) -> Tensor:
    """log p(targets) predicted at (rows, cols) of the last `keep` positions: float32 [n].

    With a fused head only those n hidden states meet the lm_head (TokenLogps); otherwise the
    model computes its logits for the last `keep` positions.
    """
    if not _fused_head(model):
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
        picked = logits[rows, cols, targets]
        if logits.dtype in (torch.float32, torch.float64):
            return picked - torch.logsumexp(logits[rows, cols], dim=-1)
        # half precision: upcast one chunk of positions at a time, not the whole block
        lse = torch.cat(
            [torch.logsumexp(x.float(), dim=-1) for x in logits[rows, cols].split(1024)]
        )
        return picked.float() - lse
    hidden = _final_hidden(model, inputs)
    weight = model.get_output_embeddings().weight  # after the forward: FSDP's gathered one
    hidden = hidden[:, hidden.shape[1] - keep :][rows, cols]
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        return TokenLogps.apply(hidden, weight, targets)


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
    # Position j (of the last span + 1) predicts token j + 1: only response tokens are scored.
    rows, cols = response_mask[:, t - span :].nonzero(as_tuple=True)
    logps = _picked_logps(
        model,
        {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids},
        span + 1,
        rows,
        cols,
        input_ids[:, t - span :][rows, cols],
    )
    out = torch.zeros(input_ids.shape[0], dtype=logps.dtype, device=logps.device)
    return out.index_add(0, rows, logps)


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
    rows, tokens = (batch.owner >= 0).nonzero(as_tuple=True)
    logps = _picked_logps(
        model,
        {"input_ids": batch.input_ids, "attention_mask": mask, "position_ids": batch.position_ids},
        batch.span,
        rows,
        batch.source[rows, tokens],
        batch.target[rows, tokens],
    )
    out = torch.zeros(
        batch.input_ids.shape[0] * batch.width, dtype=logps.dtype, device=logps.device
    )
    out = out.index_add(0, rows * batch.width + batch.owner[rows, tokens], logps)
    return out.view(-1, batch.width)


RESPONSES_PER_ROW = 4
"""score_responses puts at most this many responses to one prompt in a row (attention over a
row costs its length squared)."""


def score_responses(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    pad_id: int,
    max_tokens_per_batch: int,
) -> list[float]:
    """S_M(y) for each (prompt, response), without grad and with dropout off (eval mode).

    Used to precompute reference log-probs once per round. Responses to the same prompt share
    one forward of it (up to RESPONSES_PER_ROW per row; models whose attention takes no custom
    mask score each response in a row of its own), rows of similar length are batched
    together, each forward holding at most `max_tokens_per_batch` tokens padding included
    (rows × the longest row; a row longer than that is a forward alone), so the memory of a
    forward is bounded whatever the responses' lengths. The model's train/eval mode is
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

    def width(row: list[int]) -> int:
        return len(prompt_ids[row[0]]) + sum(len(response_ids[i]) for i in row)

    rows.sort(key=width)
    was_training = model.training
    model.eval()
    scores = [0.0] * len(prompt_ids)
    try:
        with torch.inference_mode():
            start = 0
            while start < len(rows):
                # Rows are sorted by width: the last one added sets the padded width.
                stop = start + 1
                while stop < len(rows) and (stop + 1 - start) * width(rows[stop]) <= (
                    max_tokens_per_batch
                ):
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
