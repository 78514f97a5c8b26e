"""Win rate of a policy against a baseline, its standard error, and the length-controlled win
rate of AlpacaEval 2 (Dubois et al. 2024, "Length-Controlled AlpacaEval: A Simple Way to Debias
Automatic Evaluators", arXiv:2404.04475).

Each held-out prompt gives one outcome y ∈ [0, 1]: the judge's preference for the policy's
response over the baseline's (1 a win, 0 a loss, 0.5 a tie; a pairwise judge's probability).
The win rate is the mean outcome. The length-controlled win rate fits the paper's GLM

    logit P(policy ≻ baseline | x) = θ + φ · tanh(Δlen_x / sd(Δlen))

(Δlen = policy length − baseline length) by maximum likelihood on the fractional outcomes,
and reports the prediction with the length term at zero, σ(θ). The paper's third term, an
instruction-difficulty effect shared across models, needs many models fit jointly; with one
policy against one baseline it is not identifiable and drops out.

LC is a prediction at Δlen = 0; when every prompt's length difference has the same sign (the
policy is longer, or shorter, on all of them) no prompt shows what the judge does without a
length gap, the fit extrapolates the curve beyond its data (a policy longer by a near-constant
amount gets any LC the noise of the differences implies), and LC is not reported (None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A ridge this small moves a well-posed fit by ~1e-6 and keeps a separated one (the policy
# wins exactly when it is longer) finite and deterministic instead of diverging.
_RIDGE = 1e-6
_MAX_NEWTON_STEPS = 100
_TOLERANCE = 1e-12


@dataclass(frozen=True)
class WinRate:
    """A policy's figures against a baseline over `n` prompts (lengths in characters)."""

    win_rate: float
    win_rate_se: float
    """Standard error of the mean outcome (sample sd / √n; 0 for n = 1)."""
    win_rate_lc: float | None
    """Length-controlled win rate σ(θ); None when every length difference has one sign."""
    n: int
    tie_share: float
    """Share of outcomes exactly 0.5."""
    policy_mean_length: float
    baseline_mean_length: float
    length_coefficient: float | None
    """φ, the fitted weight of the length term (0 when lengths never differ; None when LC is
    not reported)."""


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _log_likelihood(theta: float, phi: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    total = -0.5 * _RIDGE * (theta * theta + phi * phi)
    for x, y in zip(xs, ys, strict=True):
        z = theta + phi * x
        # log σ(z) and log σ(−z) without overflow.
        log_p = -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))
        log_q = log_p - z
        total += y * log_p + (1.0 - y) * log_q
    return total


def fit_length_glm(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(θ, φ) maximising Σ y log σ(θ + φx) + (1 − y) log σ(−θ − φx) − ridge/2 (θ² + φ²).

    Newton's method with step halving from (0, 0); the penalised objective is strictly
    concave, so the fit is unique and deterministic, also under separation.
    """
    theta, phi = 0.0, 0.0
    current = _log_likelihood(theta, phi, xs, ys)
    for _ in range(_MAX_NEWTON_STEPS):
        g0, g1 = -_RIDGE * theta, -_RIDGE * phi
        h00 = h01 = h11 = _RIDGE
        for x, y in zip(xs, ys, strict=True):
            p = _sigmoid(theta + phi * x)
            w = p * (1.0 - p)
            g0 += y - p
            g1 += (y - p) * x
            h00 += w
            h01 += w * x
            h11 += w * x * x
        det = h00 * h11 - h01 * h01
        d0 = (h11 * g0 - h01 * g1) / det
        d1 = (h00 * g1 - h01 * g0) / det
        step = 1.0
        while step > 1e-10:
            cand = _log_likelihood(theta + step * d0, phi + step * d1, xs, ys)
            if cand >= current:
                break
            step /= 2
        theta, phi = theta + step * d0, phi + step * d1
        previous, current = current, _log_likelihood(theta, phi, xs, ys)
        if abs(current - previous) < _TOLERANCE * max(1.0, abs(current)):
            break
    return theta, phi


def win_rate(
    outcomes: Sequence[float],
    policy_lengths: Sequence[float],
    baseline_lengths: Sequence[float],
) -> WinRate:
    """The figures of per-prompt outcomes (y ∈ [0, 1]) with both responses' lengths.

    Raises ValueError for no outcomes or sequences of different lengths. When the length
    differences do not vary (sd 0, or one prompt) the length term is 0 and LC = σ(logit of
    the win rate); a win rate of 0 or 1 is its own LC. When every difference is positive, or
    every one negative, LC and φ are None (module docstring).
    """
    n = len(outcomes)
    if n == 0:
        raise ValueError("win_rate needs at least one outcome")
    if not n == len(policy_lengths) == len(baseline_lengths):
        raise ValueError("outcomes, policy_lengths and baseline_lengths differ in length")
    mean = sum(outcomes) / n
    se = 0.0
    if n > 1:
        var = sum((y - mean) ** 2 for y in outcomes) / (n - 1)
        se = math.sqrt(var / n)
    deltas = [a - b for a, b in zip(policy_lengths, baseline_lengths, strict=True)]
    delta_mean = sum(deltas) / n
    sd = math.sqrt(sum((d - delta_mean) ** 2 for d in deltas) / (n - 1)) if n > 1 else 0.0
    lc: float | None
    phi: float | None
    if min(deltas) > 0 or max(deltas) < 0:
        lc, phi = None, None
    elif mean in (0.0, 1.0):
        lc, phi = mean, 0.0
    elif sd == 0.0:
        lc, phi = mean, 0.0
    else:
        theta, phi = fit_length_glm([math.tanh(d / sd) for d in deltas], list(outcomes))
        lc = _sigmoid(theta)
    return WinRate(
        win_rate=mean,
        win_rate_se=se,
        win_rate_lc=lc,
        n=n,
        tie_share=sum(1 for y in outcomes if y == 0.5) / n,
        policy_mean_length=sum(policy_lengths) / n,
        baseline_mean_length=sum(baseline_lengths) / n,
        length_coefficient=phi,
    )
