"""Win rate, its standard error and AlpacaEval 2's length-controlled win rate, by hand."""

from __future__ import annotations

import math

import pytest

from selfplay.win_rate import fit_length_glm, win_rate


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_ties_count_half_and_the_standard_error_is_the_sample_sd_over_root_n():
    got = win_rate([1.0, 0.0, 0.5, 0.5], [3, 3, 3, 3], [3, 3, 3, 3])
    assert got.win_rate == 0.5 and got.tie_share == 0.5 and got.n == 4
    # Outcomes 1, 0, .5, .5: deviations ±.5, 0, 0 → var (0.25 + 0.25) / 3; se = sqrt(var / 4).
    assert got.win_rate_se == pytest.approx(math.sqrt((0.5 / 3) / 4))
    # Equal lengths: no length term, LC is the win rate itself.
    assert got.win_rate_lc == 0.5 and got.length_coefficient == 0.0
    assert got.policy_mean_length == got.baseline_mean_length == 3


def test_two_length_groups_give_theta_the_mean_of_their_logits():
    # Group + (policy 10 chars longer): win share 0.8; group − (10 shorter): 0.4.
    # The model θ ± φ·tanh(10/sd) is saturated on two groups: θ + φc = logit .8,
    # θ − φc = logit .4, so θ = (logit .8 + logit .4) / 2 exactly.
    outcomes = [1.0] * 8 + [0.0] * 2 + [1.0] * 4 + [0.0] * 6
    policy = [20] * 10 + [0] * 10
    baseline = [10] * 20
    got = win_rate(outcomes, policy, baseline)
    theta = (_logit(0.8) + _logit(0.4)) / 2
    assert got.win_rate == pytest.approx(0.6)
    assert got.win_rate_lc == pytest.approx(1 / (1 + math.exp(-theta)), abs=1e-6)
    # sd(Δlen) of ten +10 and ten −10 (ddof 1) = 10·sqrt(20/19); φ = (logit .8 − logit .4)/2c.
    c = math.tanh(10 / (10 * math.sqrt(20 / 19)))
    assert got.length_coefficient == pytest.approx((_logit(0.8) - _logit(0.4)) / (2 * c), abs=1e-5)


def test_a_judge_that_prefers_longer_answers_has_a_raw_win_rate_well_above_half_and_lc_near_it():
    # The policy is 15 characters longer on 80 prompts, 15 shorter on 20; the judge prefers the
    # longer response 90% of the time whoever wrote it: raw 0.8·0.9 + 0.2·0.1 = 0.74, and
    # θ ± φc = logit .9, logit .1 gives θ = 0, LC σ(0) = 0.5.
    outcomes = [1.0] * 72 + [0.0] * 8 + [1.0] * 2 + [0.0] * 18
    policy = [35] * 80 + [5] * 20
    baseline = [20] * 100
    got = win_rate(outcomes, policy, baseline)
    assert got.win_rate == pytest.approx(0.74)
    assert got.win_rate_lc == pytest.approx(0.5, abs=1e-5)
    assert got.length_coefficient > 1


def test_fractional_targets_fit_like_their_counts():
    xs = [1.0, 1.0, -1.0, -1.0]
    theta, phi = fit_length_glm(xs, [0.9, 0.9, 0.3, 0.3])
    assert theta == pytest.approx((_logit(0.9) + _logit(0.3)) / 2, abs=1e-5)
    assert phi == pytest.approx((_logit(0.9) - _logit(0.3)) / 2, abs=1e-5)


def test_separation_is_deterministic_and_finite():
    # Every win longer, every loss shorter: the unpenalised MLE has φ → ∞.
    outcomes, policy, baseline = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0], [9, 8, 1, 2, 7, 0], [5] * 6
    first = win_rate(outcomes, policy, baseline)
    assert first == win_rate(outcomes, policy, baseline)
    assert math.isfinite(first.length_coefficient) and 0 < first.win_rate_lc < 1
    # All wins (or all losses): LC is the raw rate.
    assert win_rate([1.0, 1.0], [1, 9], [5, 5]).win_rate_lc == 1.0
    assert win_rate([0.0, 0.0], [1, 9], [5, 5]).win_rate_lc == 0.0


def test_no_lc_when_the_policy_is_longer_on_every_prompt():
    # A policy 3–5 characters longer everywhere: no prompt shows the judge without a length
    # gap, and the fit would extrapolate (LC ≈ 0.99 at a raw 0.4 on such data): not reported.
    outcomes = [1.0, 0.0, 0.0, 1.0, 0.0]
    got = win_rate(outcomes, [8, 9, 7, 8, 9], [4, 5, 4, 3, 5])
    assert got.win_rate == pytest.approx(0.4) and got.win_rate_se > 0
    assert got.win_rate_lc is None and got.length_coefficient is None
    assert win_rate([1.0, 0.0], [1, 2], [5, 5]).win_rate_lc is None  # shorter everywhere
    # One prompt without a gap is enough to anchor the prediction at Δlen = 0.
    assert win_rate([1.0, 0.0, 0.5], [8, 9, 4], [4, 5, 4]).win_rate_lc is not None


def test_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        win_rate([], [], [])
    with pytest.raises(ValueError, match="differ"):
        win_rate([1.0], [1, 2], [1])
