"""Pure pair losses on summed response log-probs (ALGORITHMS.md, "Offline pair losses").

Every loss has the same signature, `(PairLogps, LossParams) -> LossOutput`, and is selected by
name through `LOSSES`. A loss's hyper-parameters are fields of `LossParams`: a new loss adds the
fields it needs (with the paper's default) and reads only those, so the trainer never branches
on the loss name. No I/O, no devices, no config objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class PairLogps:
    """Log-probs of B (chosen, rejected) pairs.

    `policy_*` and `ref_*` are float tensors [B] of summed response-token log-probs S_M(y)
    (policy ones carry gradient, reference ones do not); `*_len` are [B] response token counts.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor
    chosen_len: Tensor
    rejected_len: Tensor


@dataclass(frozen=True)
class LossParams:
    """Hyper-parameters of every loss; each loss reads only the ones it uses."""

    beta: float = 0.1


@dataclass(frozen=True)
class LossOutput:
    """Per-pair losses [B] and detached implicit rewards [B] β·(S_θ − S_ref) for logging."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


LossFn = Callable[[PairLogps, LossParams], LossOutput]


def _up(x: Tensor) -> Tensor:
    """Cast half-precision log-probs up to float32; float64 stays float64 (gradcheck)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _mean_logp(logp: Tensor, length: Tensor) -> Tensor:
    # An empty response would divide by zero; its summed log-prob is 0 anyway.
    return _up(logp) / length.to(_up(logp).dtype).clamp_min(1)


def _rewards(b: PairLogps, beta: float) -> tuple[Tensor, Tensor]:
    chosen = beta * (_up(b.policy_chosen) - _up(b.ref_chosen))
    rejected = beta * (_up(b.policy_rejected) - _up(b.ref_rejected))
    return chosen.detach(), rejected.detach()


def dpo_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """DPO: −log σ(β h), h = ℓ(y_w) − ℓ(y_l); losses [B] in float32 or wider."""
    h = (_up(b.policy_chosen) - _up(b.ref_chosen)) - (_up(b.policy_rejected) - _up(b.ref_rejected))
    return LossOutput(-F.logsigmoid(p.beta * h), *_rewards(b, p.beta))


def nll_term(b: PairLogps) -> Tensor:
    """Per-token NLL of the chosen response, −S_θ(y_w)/|y_w|: [B]."""
    return -_mean_logp(b.policy_chosen, b.chosen_len)


def rft_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """Rejection-sampling fine-tuning: −S_θ(y_w)/|y_w| on the chosen response only; [B].

    The rewards are DPO's β·log-ratios, reported only so runs of every loss log the same metrics.
    """
    return LossOutput(nll_term(b), *_rewards(b, p.beta))


LOSSES: dict[str, LossFn] = {
    "dpo": dpo_loss,
    "rft": rft_loss,
}
