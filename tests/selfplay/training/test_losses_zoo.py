"""Every loss of the zoo against numbers worked by hand, and gradcheck in float64.

The shared pair: S_θ(y_w) = -1, S_θ(y_l) = -2, S_ref(y_w) = S_ref(y_l) = -1.5, so
ℓ(y_w) = 0.5, ℓ(y_l) = -0.5 and h = 1. Softplus values used below:
log(1 + e^-0.1) = 0.644396641, log(1 + e^0.1) = 0.744396641.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from selfplay.algorithms import LOSSES
from selfplay.training.losses import (
    CHIPO_EXP_CLAMP,
    LOSS_FNS,
    LossParams,
    PairLogps,
    cdpo_loss,
    chipo_loss,
    dno_loss,
    dpo_loss,
    dpop_loss,
    inpo_loss,
    ipo_loss,
    rdpo_loss,
    simpo_loss,
    sppo_loss,
    xpo_loss,
)


def one(v: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor([v], dtype=dtype)


def shared(**extra) -> PairLogps:
    fields = dict(
        policy_chosen=one(-1.0),
        policy_rejected=one(-2.0),
        ref_chosen=one(-1.5),
        ref_rejected=one(-1.5),
        chosen_len=torch.tensor([2]),
        rejected_len=torch.tensor([4]),
    )
    fields.update(extra)
    return PairLogps(**fields)


def close(actual: torch.Tensor, expected: float) -> None:
    torch.testing.assert_close(actual, one(expected), rtol=1e-6, atol=1e-6)


def test_cdpo_and_rdpo_differ_in_the_sign_of_epsilon():
    p = LossParams(beta=0.1, epsilon=0.1)
    # cdpo: 0.9·0.644396641 + 0.1·0.744396641 = 0.654396641 (above DPO's 0.644396641)
    close(cdpo_loss(shared(), p).losses, 0.654396641)
    # rdpo: (0.9·0.644396641 − 0.1·0.744396641) / 0.8 = 0.631896641 (below DPO's)
    close(rdpo_loss(shared(), p).losses, 0.631896641)
    close(dpo_loss(shared(), p).losses, 0.644396641)
    # ε = 0: both are DPO.
    p0 = LossParams(beta=0.1, epsilon=0.0)
    close(cdpo_loss(shared(), p0).losses, 0.644396641)
    close(rdpo_loss(shared(), p0).losses, 0.644396641)


def test_rdpo_rejects_epsilon_of_one_half():
    with pytest.raises(ValueError, match="epsilon < 0.5"):
        rdpo_loss(shared(), LossParams(epsilon=0.5))


def test_ipo_uses_per_token_means():
    # h̄ = 0.5/2 − (−0.5)/4 = 0.375 ; 1/(2τ) = 5 ; (0.375 − 5)² = 21.390625
    close(ipo_loss(shared(), LossParams(ipo_tau=0.1)).losses, 21.390625)


def test_simpo_needs_no_reference():
    # β=2, γ=1: 2·(−1/2) − 2·(−2/4) − 1 = −1 ; loss = log(1 + e) = 1.313261687
    b = shared(ref_chosen=one(123.0), ref_rejected=one(-55.0))  # ignored
    close(simpo_loss(b, LossParams(beta=2.0, simpo_gamma_ratio=0.5)).losses, 1.313261687)


def test_chipo_hand_value():
    # φ(0.5) = e^0.5 + 0.5 = 2.148721271 ; φ(−0.5) = e^−0.5 − 0.5 = 0.106530660
    # z = 0.05·(2.148721271 − 0.106530660) = 0.102109531 ; loss = log(1 + e^−z) = 0.643898...
    z = 0.05 * (math.exp(0.5) + 0.5 - (math.exp(-0.5) - 0.5))
    assert abs(z - 0.102109531) < 1e-8
    close(chipo_loss(shared(), LossParams(beta=0.05, chipo_r=10)).losses, math.log1p(math.exp(-z)))


def test_chipo_clamps_the_exponent_and_clips_the_margin():
    # ℓ(y_w) = 0 − (−500) = 500: exp(500) overflows float32; clamped at 80, then the margin
    # 0.05·(e^80 + 500 − φ(ℓ_l)) is clipped at 2R = 20: loss = log(1 + e^−20) = 2.0611536e-09.
    pc = torch.tensor([0.0], requires_grad=True)
    b = shared(policy_chosen=pc, ref_chosen=one(-500.0))
    out = chipo_loss(b, LossParams(beta=0.05, chipo_r=10))
    assert torch.isfinite(out.losses).all()
    close(out.losses, math.log1p(math.exp(-20)))
    out.losses.sum().backward()
    assert pc.grad.item() == 0.0  # saturated pair: zero gradient, as the paper intends
    assert CHIPO_EXP_CLAMP == 80.0


def test_dpop_hand_value():
    # Chosen fell below the reference: S_θ(y_w) = −2, S_ref(y_w) = −1.5 → ℓ(y_w) = −0.5;
    # S_θ(y_l) = −4, S_ref(y_l) = −2 → ℓ(y_l) = −2; h = 1.5; penalty max(0, −1.5 + 2) = 0.5.
    # β = 0.1, λ = 2: z = 0.1·(1.5 − 2·0.5) = 0.05 ; loss = log(1 + e^−0.05) = 0.668459648
    # (DPO: z = 0.15, log(1 + e^−0.15) = 0.620957048: the penalty raises the loss).
    b = shared(policy_chosen=one(-2.0), policy_rejected=one(-4.0), ref_rejected=one(-2.0))
    close(dpop_loss(b, LossParams(beta=0.1, dpop_lambda=2.0)).losses, 0.668459648)
    close(dpo_loss(b, LossParams(beta=0.1)).losses, 0.620957048)
    # The shared pair's chosen rose above the reference (ℓ(y_w) = 0.5): no penalty, DPO's value.
    close(dpop_loss(shared(), LossParams(beta=0.1, dpop_lambda=2.0)).losses, 0.644396641)


def test_dpop_with_lambda_zero_is_dpo():
    gen = torch.Generator().manual_seed(0)
    b = PairLogps(*(-5 * torch.rand(4, 8, generator=gen)), torch.ones(8), torch.ones(8))
    torch.testing.assert_close(
        dpop_loss(b, LossParams(beta=0.3, dpop_lambda=0.0)).losses,
        dpo_loss(b, LossParams(beta=0.3)).losses,
    )


def test_dpop_penalty_acts_only_below_the_reference():
    # Gradient w.r.t. S_θ(y_w) is −β·σ(−z)·(1 + λ) while the chosen is below the reference,
    # DPO's −β·σ(−z) otherwise. Below (the hand-value pair): −0.1·σ(−0.05)·3 = −0.146250781;
    # w.r.t. S_θ(y_l) it is +β·σ(−z) = 0.048750260 either way.
    pc, pr = torch.tensor([-2.0], requires_grad=True), torch.tensor([-4.0], requires_grad=True)
    b = shared(policy_chosen=pc, policy_rejected=pr, ref_rejected=one(-2.0))
    dpop_loss(b, LossParams(beta=0.1, dpop_lambda=2.0)).losses.sum().backward()
    close(pc.grad, -0.146250781)
    close(pr.grad, 0.048750260)
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    # Above (the shared pair, ℓ(y_w) = 0.5): the same gradients as DPO for any λ.
    grads = []
    for fn, params in [(dpop_loss, LossParams(dpop_lambda=50.0)), (dpo_loss, LossParams())]:
        pc = torch.tensor([-1.0], requires_grad=True)
        fn(shared(policy_chosen=pc), params).losses.sum().backward()
        grads.append(pc.grad)
    torch.testing.assert_close(grads[0], grads[1])
    # A large λ on a chosen response far below its reference stays finite.
    pc = torch.tensor([-300.0], requires_grad=True)
    out = dpop_loss(shared(policy_chosen=pc), LossParams(dpop_lambda=50.0))
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(pc.grad).all()
    assert LOSSES["dpop"].reference == "config"


def test_dno_is_dpo_against_the_previous_policy():
    close(dno_loss(shared(), LossParams(beta=0.1)).losses, 0.644396641)
    assert LOSSES["dno"].reference == "previous"


def test_inpo_three_sources():
    # h = (−1 + 2) − (τ/η)(−1.5 + 1.5) − ((η−τ)/η)(−1.2 + 1.8) = 1 − (2/3)·0.6 = 0.6
    # 1/(2η) = 100 ; loss = (0.6 − 100)² = 9880.36
    b = shared(prev_chosen=one(-1.2), prev_rejected=one(-1.8))
    close(inpo_loss(b, LossParams(inpo_eta=0.005, inpo_tau=0.005 / 3)).losses, 9880.36)
    close(inpo_loss(b, LossParams(inpo_eta=0.005)).losses, 9880.36)  # τ defaults to η/3
    # τ = 0 (no-KL ablation): h = 1 − 0.6 = 0.4 ; (0.4 − 100)² = 9920.16
    close(inpo_loss(b, LossParams(inpo_eta=0.005, inpo_tau=0.0)).losses, 9920.16)
    with pytest.raises(ValueError, match="prev_chosen"):
        inpo_loss(shared(), LossParams())
    assert LOSSES["inpo"].needs_prev and LOSSES["inpo"].reference == "sft"


def test_sppo_win_probability_targets():
    # η = 10: targets 10·(0.75 − ½) = 2.5 and 10·(0.25 − ½) = −2.5
    # ½[(0.5 − 2.5)² + (−0.5 + 2.5)²] = ½[4 + 4] = 4
    b = shared(chosen_target=one(0.75), rejected_target=one(0.25))
    close(sppo_loss(b, LossParams(sppo_eta=10.0)).losses, 4.0)
    with pytest.raises(ValueError, match="chosen_target"):
        sppo_loss(shared(), LossParams())


def test_xpo_bonus_on_the_reference_sample():
    p = LossParams(beta=0.1, xpo_alpha=0.01)
    # chosen is ỹ: 0.644396641 + 0.01·(−1) ; rejected is ỹ: 0.644396641 + 0.01·(−2)
    close(xpo_loss(shared(chosen_is_ref_sample=torch.tensor([True])), p).losses, 0.634396641)
    close(xpo_loss(shared(chosen_is_ref_sample=torch.tensor([False])), p).losses, 0.624396641)


EXTRAS = {
    "inpo": ("prev_chosen", "prev_rejected"),
    "sppo": ("chosen_target", "rejected_target"),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradcheck(name: str):
    gen = torch.Generator().manual_seed(1)
    n = 3
    lens = torch.tensor([3, 5, 1])
    extra_names = EXTRAS.get(name, ())

    def rand() -> torch.Tensor:
        # Small log-ratios keep χPO inside its clip range (the clip has a kink at ±2R).
        return (-0.5 * torch.rand(n, generator=gen, dtype=torch.float64)).requires_grad_()

    inputs = tuple(rand() for _ in range(4 + len(extra_names)))
    flag = torch.tensor([True, False, True])
    params = LossParams(beta=0.7, chipo_r=10.0, sppo_eta=2.0, inpo_eta=0.5, inpo_tau=0.1)

    def f(pc, pr, rc, rr, *extra):
        fields = dict(zip(extra_names, [e + 0.5 for e in extra], strict=True))
        b = PairLogps(pc, pr, rc, rr, lens, lens, chosen_is_ref_sample=flag, **fields)
        return LOSS_FNS[name](b, params).losses

    assert gradcheck(f, inputs)
