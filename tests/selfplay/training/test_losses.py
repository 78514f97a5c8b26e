import math
from dataclasses import replace

import torch
from torch.autograd import gradcheck

from selfplay.algorithms import LOSSES
from selfplay.training.losses import (
    LOSS_FNS,
    LossParams,
    PairLogps,
    dpo_loss,
    nll_term,
    rft_loss,
)


def pair_logps(pc, pr, rc, rr, cl=None, rl=None, dtype=torch.float32) -> PairLogps:
    """Pairs from lists of floats; lengths default to 1 token."""
    ones = [1] * len(pc)
    return PairLogps(
        policy_chosen=torch.tensor(pc, dtype=dtype),
        policy_rejected=torch.tensor(pr, dtype=dtype),
        ref_chosen=torch.tensor(rc, dtype=dtype),
        ref_rejected=torch.tensor(rr, dtype=dtype),
        chosen_len=torch.tensor(cl or ones),
        rejected_len=torch.tensor(rl or ones),
    )


def test_dpo_matches_hand_worked_numbers():
    # Pair 0: πc=-1, πr=-2, rc=-1.5, rr=-1.5.
    #   ℓ(y_w) = -1 - (-1.5) = 0.5 ; ℓ(y_l) = -2 - (-1.5) = -0.5 ; h = 0.5 - (-0.5) = 1
    #   β=0.1: βh = 0.1 ; loss = -log σ(0.1) = log(1 + e^-0.1) = log(1.904837418) = 0.644396641
    #   rewards: chosen 0.1·0.5 = 0.05, rejected 0.1·(-0.5) = -0.05
    # Pair 1: πc=-3, πr=-1, rc=-2, rr=-2.
    #   ℓ(y_w) = -1 ; ℓ(y_l) = 1 ; h = -2 ; βh = -0.2
    #   loss = log(1 + e^0.2) = log(2.221402758) = 0.798138869 ; rewards -0.1, 0.1
    b = pair_logps([-1.0, -3.0], [-2.0, -1.0], [-1.5, -2.0], [-1.5, -2.0])
    out = dpo_loss(b, LossParams(beta=0.1))
    torch.testing.assert_close(out.losses, torch.tensor([0.644396641, 0.798138869]))
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.05, -0.1]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.05, 0.1]))
    assert not out.chosen_rewards.requires_grad


def test_dpo_beta_scales_the_margin():
    # h = 1 as in pair 0 above, β=0.5: loss = log(1 + e^-0.5) = log(1.606530660) = 0.474076984
    b = pair_logps([-1.0], [-2.0], [-1.5], [-1.5])
    torch.testing.assert_close(
        dpo_loss(b, LossParams(beta=0.5)).losses, torch.tensor([0.474076984])
    )


def test_dpo_zero_margin_is_log_two():
    # h = 0 → loss = -log σ(0) = log 2 = 0.693147181, whatever β.
    b = pair_logps([-4.0], [-7.0], [-4.0], [-7.0])
    torch.testing.assert_close(
        dpo_loss(b, LossParams(beta=3.0)).losses, torch.tensor([math.log(2)])
    )


def test_dpo_stays_finite_at_large_margins():
    # πc = -1e4, the rest 0: h = -1e4, βh = -1000. -log σ(-1000) = log(1 + e^1000) ≈ 1000;
    # log(sigmoid(-1000)) would be log(0) = -inf in float32.
    b = pair_logps([-1e4, 0.0], [0.0, -1e4], [0.0, 0.0], [0.0, 0.0])
    b = replace(b, policy_chosen=b.policy_chosen.requires_grad_())
    out = dpo_loss(b, LossParams(beta=0.1))
    torch.testing.assert_close(out.losses, torch.tensor([1000.0, 0.0]))
    out.losses.sum().backward()
    # d/dπc of -log σ(βh) = -β σ(-βh): -0.1 for the saturated-wrong pair, 0 for the right one.
    torch.testing.assert_close(b.policy_chosen.grad, torch.tensor([-0.1, 0.0]))


def test_dpo_reduces_half_precision_in_float32():
    b = pair_logps([-1.0], [-2.0], [-1.5], [-1.5], dtype=torch.bfloat16)
    out = dpo_loss(b, LossParams(beta=0.1))
    assert out.losses.dtype == torch.float32
    torch.testing.assert_close(out.losses, torch.tensor([0.644396641]))


def test_rft_is_per_token_nll_of_chosen():
    # Pair 0: S_θ(y_w) = -6 over 3 tokens → 6/3 = 2.0. Pair 1: -1 over 4 tokens → 0.25.
    # The rejected side and the reference do not enter the loss.
    b = pair_logps([-6.0, -1.0], [-9.0, -0.5], [-5.0, -1.0], [-1.0, -3.0], cl=(3, 4), rl=(2, 7))
    out = rft_loss(b, LossParams(beta=0.1))
    torch.testing.assert_close(out.losses, torch.tensor([2.0, 0.25]))
    # Logged rewards: 0.1·(-6+5) = -0.1, 0.1·(-1+1) = 0 ; 0.1·(-9+1) = -0.8, 0.1·(-0.5+3) = 0.25
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([-0.1, 0.0]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.8, 0.25]))


def test_nll_term():
    # -(-6)/3 = 2.0 ; -(-1)/4 = 0.25 ; an empty response counts as 1 token, not a 0/0.
    b = pair_logps([-6.0, -1.0, 0.0], [0.0] * 3, [0.0] * 3, [0.0] * 3, cl=(3, 4, 0))
    torch.testing.assert_close(nll_term(b), torch.tensor([2.0, 0.25, 0.0]))


def test_dpo_gradcheck():
    gen = torch.Generator().manual_seed(0)
    lens = torch.tensor([3, 5, 1])

    def f(pc, pr, rc, rr):
        b = PairLogps(pc, pr, rc, rr, lens, lens)
        return dpo_loss(b, LossParams(beta=0.7)).losses

    inputs = tuple(
        (-5 * torch.rand(3, generator=gen, dtype=torch.float64)).requires_grad_() for _ in range(4)
    )
    assert gradcheck(f, inputs)


def test_rft_gradcheck():
    lens = torch.tensor([3, 5, 1])
    rest = torch.zeros(3, dtype=torch.float64)

    def f(pc):
        return rft_loss(PairLogps(pc, rest, rest, rest, lens, lens), LossParams()).losses

    pc = torch.tensor([-2.0, -0.3, -7.0], dtype=torch.float64, requires_grad=True)
    assert gradcheck(f, (pc,))


def test_every_registered_loss_has_a_function():
    assert list(LOSS_FNS) == list(LOSSES)
    assert LOSS_FNS["dpo"] is dpo_loss and LOSS_FNS["rft"] is rft_loss
