"""Train a policy on one round's preference pairs with a loss chosen by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor
from transformers import PreTrainedModel

from selfplay.config import TrainingConfig
from selfplay.training.logprobs import build_batch, sequence_logprobs
from selfplay.training.losses import LOSSES, LossFn, LossParams, PairLogps, nll_term


@dataclass(frozen=True)
class PairExample:
    """One preference pair and the reference policy's S_ref of each response (precomputed)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    ref_chosen_logp: float
    ref_rejected_logp: float


def _batches(n: int, batch_size: int, epochs: int, seed: int) -> Iterator[list[int]]:
    """Indices of each batch: a fresh seeded permutation of range(n) per epoch."""
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order).tolist()
        for start in range(0, n, batch_size):
            yield perm[start : start + batch_size]


def _step(
    model: PreTrainedModel,
    batch: list[PairExample],
    loss_fn: LossFn,
    params: LossParams,
    nll_weight: float,
    pad_id: int,
) -> tuple[Tensor, dict[str, float]]:
    """Forward chosen and rejected together; return the loss to minimise and step metrics."""
    n = len(batch)
    prompts = [p.prompt_ids for p in batch] * 2
    responses = [p.chosen_ids for p in batch] + [p.rejected_ids for p in batch]
    device = next(model.parameters()).device
    input_ids, attention_mask, response_mask = (
        x.to(device) for x in build_batch(prompts, responses, pad_id)
    )
    logps = sequence_logprobs(model, input_ids, attention_mask, response_mask)
    lengths = response_mask.sum(-1)
    ref = torch.tensor(
        [p.ref_chosen_logp for p in batch] + [p.ref_rejected_logp for p in batch],
        dtype=logps.dtype,
        device=device,
    )
    b = PairLogps(
        policy_chosen=logps[:n],
        policy_rejected=logps[n:],
        ref_chosen=ref[:n],
        ref_rejected=ref[n:],
        chosen_len=lengths[:n],
        rejected_len=lengths[n:],
    )
    out = loss_fn(b, params)
    loss = out.losses.mean() + nll_weight * nll_term(b).mean()
    metrics = {
        "loss": loss.item(),
        "reward_margin": (out.chosen_rewards - out.rejected_rewards).mean().item(),
        "preference_accuracy": (out.chosen_rewards > out.rejected_rewards).float().mean().item(),
        "chosen_logp": b.policy_chosen.detach().mean().item(),
        "rejected_logp": b.policy_rejected.detach().mean().item(),
    }
    return loss, metrics


def train_on_pairs(
    model: PreTrainedModel,
    pairs: list[PairExample],
    cfg: TrainingConfig,
    pad_id: int,
    seed: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Optimise `model` in place on `pairs`; return each step metric's mean over the steps.

    Shuffles with `seed`, `cfg.epochs` passes of `cfg.batch_size` pairs (the last batch of an
    epoch may be smaller), stops after `cfg.max_steps` steps. `on_step(step, metrics)` is called
    after each step, step counting from 1; metrics are loss, reward_margin, preference_accuracy,
    chosen_logp, rejected_logp, grad_norm (before clipping) and lr. The summary adds "steps".
    Deterministic for a given seed on CPU. Leaves the model in eval mode; no pairs: returns {}
    without touching the model.
    """
    if not pairs:
        return {}
    loss_fn = LOSSES[cfg.loss]
    params = LossParams(beta=cfg.beta)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr)
    # Linear warmup: a fresh AdamW at full lr jolts a converged policy (each round starts one).
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / (cfg.warmup_steps + 1))
    )
    totals: dict[str, float] = {}
    step = 0
    # Seed dropout without disturbing the caller's global RNG streams.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model.train()
        try:
            batches = islice(_batches(len(pairs), cfg.batch_size, cfg.epochs, seed), cfg.max_steps)
            for step, indices in enumerate(batches, start=1):
                batch = [pairs[i] for i in indices]
                loss, metrics = _step(model, batch, loss_fn, params, cfg.nll_weight, pad_id)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                metrics["lr"] = optimizer.param_groups[0]["lr"]
                optimizer.step()
                warmup.step()
                metrics["grad_norm"] = grad_norm.item()
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v
                if on_step is not None:
                    on_step(step, metrics)
        finally:
            model.eval()
    summary = {k: v / step for k, v in totals.items()}
    summary["steps"] = float(step)
    return summary
