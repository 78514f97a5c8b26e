"""Pure pair losses on summed response log-probs (ALGORITHMS.md, "Offline pair losses" and
"Iterative and online objectives").

Every loss has the same signature, `(PairLogps, LossParams) -> LossOutput`, and is mapped by
name in `LOSS_FNS`; what it needs is in the torch-free registry `selfplay.algorithms.LOSSES`
(`LossSpec`): which checkpoint the `ref_*` log-probs come from, and whether it needs the
previous-round policy's log-probs (INPO), win-probability targets (SPPO) or to know which
response was sampled from the reference (XPO). A loss's
hyper-parameters are fields of `LossParams`: each loss reads only its own, so the trainer never
branches on the loss name. No I/O, no devices, no config objects.

Units: every log-prob is a natural-log sum over response tokens (nats), S_M(y) in the notation
of ALGORITHMS.md; every tensor is [B], one entry per pair. Losses are returned per pair, [B],
in float32 (float64 inputs stay float64, for gradcheck).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

CHIPO_EXP_CLAMP = 80.0
"""χPO's φ(z) = exp(z) + z: z is clamped at this before exp (exp(80) ≈ 5.5e34 < float32 max)."""


@dataclass(frozen=True)
class PairLogps:
    """Log-probs of B (chosen, rejected) pairs, each a tensor [B].

    - `policy_*`: S_θ(y), the policy being trained (carry gradient).
    - `ref_*`: S_ref(y) of the loss's reference (no gradient): the fixed SFT model or the
      round's starting policy π_t, as `selfplay.algorithms.LOSSES[name].reference` says.
    - `*_len`: response token counts |y| (EOS included).
    - `prev_*`: S_t(y) of the round's starting policy π_t, only for losses that
      need it (`LossSpec.needs_prev` in selfplay.algorithms: INPO's third source).
    - `*_target`: SPPO's estimated win probabilities P̂(y) ∈ [0, 1].
    - `chosen_is_ref_sample`: bool, XPO: True where the chosen response is the one sampled from
      the reference (ỹ), False where the rejected one is.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor
    chosen_len: Tensor
    rejected_len: Tensor
    prev_chosen: Tensor | None = None
    prev_rejected: Tensor | None = None
    chosen_target: Tensor | None = None
    rejected_target: Tensor | None = None
    chosen_is_ref_sample: Tensor | None = None


@dataclass(frozen=True)
class LossParams:
    """Hyper-parameters of every loss (paper defaults); each loss reads only its own."""

    beta: float = 0.1  # dpo, cdpo, rdpo, simpo, chipo, dpop, dno (η), xpo; reward scale for logging
    epsilon: float = 0.1  # cdpo, rdpo: label-flip rate, in [0, 0.5)
    ipo_tau: float = 0.1  # ipo
    simpo_gamma_ratio: float = 0.5  # simpo: γ/β
    chipo_r: float = 10.0  # chipo: the margin is clipped to [−2R, 2R]
    dpop_lambda: float = 50.0  # dpop: weight of the penalty on S_θ(y_w) < S_ref(y_w)
    inpo_eta: float = 0.005  # inpo η
    inpo_tau: float | None = None  # inpo τ; None: η/3 (τ = 0: the paper's no-KL ablation)
    sppo_eta: float = 1000.0  # sppo η (β = 1/η)
    xpo_alpha: float = 1e-5  # xpo exploration bonus weight


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


def _ratios(b: PairLogps) -> tuple[Tensor, Tensor]:
    """ℓ(y_w), ℓ(y_l): log-ratios of policy to reference, [B] each."""
    return _up(b.policy_chosen) - _up(b.ref_chosen), _up(b.policy_rejected) - _up(b.ref_rejected)


def _rewards(b: PairLogps, beta: float) -> tuple[Tensor, Tensor]:
    chosen, rejected = _ratios(b)
    return (beta * chosen).detach(), (beta * rejected).detach()


def _require(value: Tensor | None, loss: str, what: str) -> Tensor:
    if value is None:
        raise ValueError(f"the {loss} loss needs {what} (PairLogps field left unset)")
    return value


def dpo_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """DPO (2305.18290): −log σ(β h), h = ℓ(y_w) − ℓ(y_l)."""
    w, lo = _ratios(b)
    return LossOutput(-F.logsigmoid(p.beta * (w - lo)), *_rewards(b, p.beta))


def cdpo_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """Conservative (label-smoothed) DPO: −(1−ε) log σ(β h) − ε log σ(−β h).

    Bounded below: the ε term pulls the margin back once it is large.
    """
    w, lo = _ratios(b)
    z = p.beta * (w - lo)
    losses = -(1 - p.epsilon) * F.logsigmoid(z) - p.epsilon * F.logsigmoid(-z)
    return LossOutput(losses, *_rewards(b, p.beta))


def rdpo_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """Robust DPO (2403.00409): [−(1−ε) log σ(β h) + ε log σ(−β h)] / (1 − 2ε).

    The ε term has the opposite SIGN to cdpo's: the loss is an unbiased estimate of the clean
    DPO loss under a flip rate ε, and it is unbounded below (the margin keeps growing).
    Requires ε < 0.5.
    """
    if not 0 <= p.epsilon < 0.5:
        raise ValueError(f"rdpo needs 0 <= epsilon < 0.5, got {p.epsilon}")
    w, lo = _ratios(b)
    z = p.beta * (w - lo)
    losses = (-(1 - p.epsilon) * F.logsigmoid(z) + p.epsilon * F.logsigmoid(-z)) / (
        1 - 2 * p.epsilon
    )
    return LossOutput(losses, *_rewards(b, p.beta))


def ipo_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """IPO (2310.12036): (h̄ − 1/(2τ))² with per-token means h̄ = ℓ(y_w)/|y_w| − ℓ(y_l)/|y_l|."""
    w, lo = _ratios(b)
    h = _mean_logp(w, b.chosen_len) - _mean_logp(lo, b.rejected_len)
    return LossOutput((h - 1 / (2 * p.ipo_tau)) ** 2, *_rewards(b, p.ipo_tau))


def simpo_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """SimPO (2405.14734), no reference: −log σ(β S_θ(y_w)/|y_w| − β S_θ(y_l)/|y_l| − γ).

    γ = `simpo_gamma_ratio`·β. The logged rewards are the length-normalised β·S_θ/|y|.
    """
    chosen = p.beta * _mean_logp(b.policy_chosen, b.chosen_len)
    rejected = p.beta * _mean_logp(b.policy_rejected, b.rejected_len)
    gamma = p.simpo_gamma_ratio * p.beta
    return LossOutput(-F.logsigmoid(chosen - rejected - gamma), chosen.detach(), rejected.detach())


def _chipo_phi(z: Tensor) -> Tensor:
    return torch.exp(z.clamp(max=CHIPO_EXP_CLAMP)) + z


def chipo_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """χPO (2407.13399): −log σ(clip_[−2R, 2R](β φ(ℓ(y_w)) − β φ(ℓ(y_l)))), φ(z) = exp(z) + z.

    ℓ is clamped at CHIPO_EXP_CLAMP before exp so the exponent cannot overflow; pairs whose
    margin is clipped get zero gradient (intended by the paper).
    """
    w, lo = _ratios(b)
    z = (p.beta * (_chipo_phi(w) - _chipo_phi(lo))).clamp(-2 * p.chipo_r, 2 * p.chipo_r)
    return LossOutput(-F.logsigmoid(z), *_rewards(b, p.beta))


def dpop_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """DPO-Positive (2402.13228): −log σ(β[h − λ·max(0, S_ref(y_w) − S_θ(y_w))]).

    DPO whose margin is cut by λ times how far the chosen response's log-prob has fallen
    below the reference's; the penalty is zero (pure DPO) while S_θ(y_w) ≥ S_ref(y_w), and
    has zero gradient where they are equal. λ = 0 is DPO.
    """
    w, lo = _ratios(b)
    penalty = F.relu(-w)  # max(0, S_ref(y_w) − S_θ(y_w))
    z = p.beta * (w - lo - p.dpop_lambda * penalty)
    return LossOutput(-F.logsigmoid(z), *_rewards(b, p.beta))


def dno_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """DNO-Prct (2404.03715, Alg. 2): −log σ(η [ℓ_t(y⁺) − ℓ_t(y⁻)]), η = β.

    Same form as DPO, but `ref_*` must hold the PREVIOUS ROUND's policy π_t (its LossSpec in
    selfplay.algorithms says so, and the stages fill it accordingly): ℓ_t = S_θ − S_t.
    """
    return dpo_loss(b, p)


def inpo_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """INPO (2407.00617): (h_t(y_w, y_l) − 1/(2η))² with three log-prob sources,

    h_t = [S_θ(y_w) − S_θ(y_l)] − (τ/η)[S_ref(y_w) − S_ref(y_l)] − ((η−τ)/η)[S_t(y_w) − S_t(y_l)],
    `ref_*` the fixed reference (SFT) and `prev_*` the round's starting policy π_t; τ
    defaults to η/3 (`LossParams.inpo_tau` None).
    """
    prev_w = _up(_require(b.prev_chosen, "inpo", "prev_chosen (π_t log-probs)"))
    prev_l = _up(_require(b.prev_rejected, "inpo", "prev_rejected (π_t log-probs)"))
    eta = p.inpo_eta
    tau = eta / 3 if p.inpo_tau is None else p.inpo_tau
    h = (
        (_up(b.policy_chosen) - _up(b.policy_rejected))
        - (tau / eta) * (_up(b.ref_chosen) - _up(b.ref_rejected))
        - ((eta - tau) / eta) * (prev_w - prev_l)
    )
    return LossOutput((h - 1 / (2 * eta)) ** 2, *_rewards(b, eta))


def sppo_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """SPPO (2405.00675): ½[(ℓ_t(y_w) − η(P̂_w − ½))² + (ℓ_t(y_l) − η(P̂_l − ½))²].

    `ref_*` hold π_t (ℓ_t = S_θ − S_t); `*_target` hold the estimated win probabilities P̂.
    Targets reach ±η/2 nats (±500 by default): keep float32 and clip gradients.
    """
    target_w = _up(_require(b.chosen_target, "sppo", "chosen_target (win probabilities)"))
    target_l = _up(_require(b.rejected_target, "sppo", "rejected_target (win probabilities)"))
    w, lo = _ratios(b)
    losses = 0.5 * (
        (w - p.sppo_eta * (target_w - 0.5)) ** 2 + (lo - p.sppo_eta * (target_l - 0.5)) ** 2
    )
    return LossOutput(losses, *_rewards(b, 1 / p.sppo_eta))


def xpo_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """XPO (2405.21046): −log σ(β[ℓ(y⁺) − ℓ(y⁻)]) + α S_θ(ỹ).

    ỹ is the response of the pair sampled from the reference (`chosen_is_ref_sample` says
    which); minimising α S_θ(ỹ) pushes mass away from what the reference already covers.
    """
    flag = _require(b.chosen_is_ref_sample, "xpo", "chosen_is_ref_sample")
    dpo = dpo_loss(b, p)
    explored = torch.where(flag, _up(b.policy_chosen), _up(b.policy_rejected))
    return LossOutput(dpo.losses + p.xpo_alpha * explored, dpo.chosen_rewards, dpo.rejected_rewards)


def nll_term(b: PairLogps) -> Tensor:
    """Per-token NLL of the chosen response, −S_θ(y_w)/|y_w|: [B]."""
    return -_mean_logp(b.policy_chosen, b.chosen_len)


def rft_loss(b: PairLogps, p: LossParams) -> LossOutput:
    """Rejection-sampling fine-tuning: −S_θ(y_w)/|y_w| on the chosen response only; [B].

    The rewards are DPO's β·log-ratios, reported only so runs of every loss log the same metrics.
    """
    return LossOutput(nll_term(b), *_rewards(b, p.beta))


LOSS_FNS: dict[str, LossFn] = {
    "dpo": dpo_loss,
    "cdpo": cdpo_loss,
    "rdpo": rdpo_loss,
    "ipo": ipo_loss,
    "simpo": simpo_loss,
    "chipo": chipo_loss,
    "dpop": dpop_loss,
    "dno": dno_loss,
    "inpo": inpo_loss,
    "sppo": sppo_loss,
    "xpo": xpo_loss,
    "rft": rft_loss,
}
"""Each loss of the registry (selfplay.algorithms.LOSSES, which says what it needs) by name."""
