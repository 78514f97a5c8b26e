"""The judge protocol: a judge labels responses; failure is a value, never an exception.

A judge scores responses one at a time (`judge`: a Verdict each) and may also compare two
responses to one prompt (`compare`: a Comparison each, the probability that the first beats
the second). Judges are built by a factory `(JudgeConfig, JudgeEnv) -> Judge`: built-ins by
name, third-party ones through the entry-point group `selfplay.judges` or `module:attr`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, runtime_checkable

from selfplay.tasks.base import Prompt

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from selfplay.config import JudgeConfig
    from selfplay.generation.base import GenerationBackend, Sample, SamplingParams
    from selfplay.tasks.base import Task


@dataclass(frozen=True)
class _Outcome:
    """What every judgment carries besides its value; `status == "failed"` carries `error`.
    Subclasses add the value as their second positional field."""

    status: Literal["ok", "failed"]
    _: KW_ONLY
    critique: str | None = None
    trace: dict[str, Any] | None = None
    error: str | None = None
    latency_s: float | None = None
    tokens: int | None = None
    cost: float | None = None

    @classmethod
    def failure(cls, error: str, **kw: Any) -> Self:
        """A failed judgment with its reason (its value is None)."""
        return cls(status="failed", error=error, **kw)


@dataclass(frozen=True)
class Verdict(_Outcome):
    """One pointwise judgment: `score` (None when failed)."""

    score: float | None = None


@dataclass(frozen=True)
class Comparison(_Outcome):
    """One pairwise judgment: `prob` = P(first response beats second), in [0, 1].

    For a judge evaluated in both orders (`symmetric_compare`), `prob` is the order-averaged
    P_sym and `trace` holds both raw probabilities and whether the verdict flipped.
    """

    prob: float | None = None


@dataclass(frozen=True)
class JudgeItem:
    """A response to judge. `extra["siblings"]` holds the other responses to the same prompt
    (texts) when the judge asks for them (`needs_siblings = True`, e.g. pairwise judges that
    score a response by its win rate against its siblings)."""

    prompt: Prompt
    response: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PairItem:
    """Two responses to one prompt, in the order they are shown to the judge."""

    prompt: Prompt
    first: str
    second: str


class Judge(Protocol):
    """Scores a batch of responses; returns one Verdict per item, in order, and never raises.

    `needs_siblings`: each item's `extra["siblings"]` holds the other responses to its prompt.
    `needs_policy`: the judge asks the policy itself and is called `judge(items, policy)`
    with the policy of the round being judged (a `Policy`); others are called `judge(items)`.
    `close` releases what the judge holds (a client, a loop, a model). Subclass `BaseJudge`
    for the defaults; a plug-in that does not is given them when it is built.
    """

    name: str
    needs_siblings: bool
    needs_policy: bool

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """Judge each item."""
        ...

    def close(self) -> None:
        """Release what the judge holds."""
        ...


class BaseJudge:
    """The defaults of the Judge protocol: no siblings, no policy, nothing to close."""

    name: str = "judge"
    needs_siblings: bool = False
    needs_policy: bool = False

    def close(self) -> None:
        """Nothing to release."""


@runtime_checkable
class PairwiseJudge(Protocol):
    """A judge that can also compare two responses (position bias measured by meta-evaluation)."""

    name: str

    def compare(self, items: list[PairItem]) -> list[Comparison]:
        """P(first beats second) for each item, in the order shown; never raises."""
        ...


@dataclass(frozen=True)
class Policy:
    """A checkpoint of the run's policy and the engine that samples from it: what a judge
    with `needs_policy` is given with each call (the `self` judge grades with it)."""

    backend: GenerationBackend
    path: str

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Sample]]:
        """Sample from this checkpoint (loading it into the engine if another one is loaded);
        the engine renders each prompt for the policy (selfplay.rendering)."""
        self.backend.load(self.path)
        return self.backend.generate(prompts, params)


@dataclass
class JudgeEnv:
    """What a judge factory may use besides its config: the task, the run's seed and the store
    (caches). Third-party judges receive the same object; the round's policy comes with each
    call (`needs_policy`), never here."""

    task: Task
    seed: int = 0
    sessions: sessionmaker[Session] | None = None


JudgeFactory = Callable[["JudgeConfig", JudgeEnv], Judge]


def _number_problem(value: object, what: str, lo: float, hi: float) -> str | None:
    """Why `value` is no usable number in [lo, hi], or None when it is one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{what} is {type(value).__name__} {value!r:.60}, not a float"
    if not math.isfinite(value):
        return f"{what} is {value}, not a finite float"
    if not lo <= value <= hi:
        return f"{what} {value} is outside [{lo}, {hi}]"
    return None


def _checked(outcome: object, kind: type[_Outcome], value: str, lo: float, hi: float) -> _Outcome:
    """The judge's returned object if it keeps the contract (a failed `kind`, or an ok one
    whose `value` is a finite real in [lo, hi], made a plain float), else a failed `kind`
    saying what is wrong (without the judge's name: the caller adds it)."""
    if not isinstance(outcome, kind):
        return kind.failure(
            f"returned {type(outcome).__name__} {outcome!r:.60}, not a {kind.__name__}"
        )
    if outcome.status == "failed":
        return outcome
    if outcome.status != "ok":
        return kind.failure(f"returned status {outcome.status!r:.60}, not 'ok' or 'failed'")
    number = getattr(outcome, value)
    problem = _number_problem(number, value, lo, hi)
    if problem is not None:
        return kind.failure(problem)
    return replace(outcome, **{value: float(number)})


def _guarded(
    name: str,
    call: Callable[[], list[Any]],
    n: int,
    noun: tuple[str, str],
    kind: type[_Outcome],
    value: str,
    lo: float,
    hi: float,
) -> list[Any]:
    """`call()`'s outcomes with every contract breach turned into a failed outcome naming the
    judge and the problem; a raise, or the wrong count, fails all `n` (never an exception)."""
    try:
        outcomes = list(call())
        if len(outcomes) != n:
            raise ValueError(f"returned {len(outcomes)} {noun[0]} for {n} {noun[1]}")
    except Exception as err:  # recorded, never raised: the loop goes on
        reason = f"judge {name!r} raised {type(err).__name__}: {err}"
        return [kind.failure(reason) for _ in range(n)]
    out = []
    for outcome in outcomes:
        checked = _checked(outcome, kind, value, lo, hi)
        if checked is not outcome and checked.status == "failed":
            checked = kind.failure(f"judge {name!r} {checked.error}")
        out.append(checked)
    return out


def safe_judge(judge: Judge, items: list[JudgeItem], policy: Policy | None = None) -> list[Verdict]:
    """The judge's verdicts, checked: a judge that raises or returns the wrong number gives a
    failed verdict per item; anything but a `Verdict` that failed or has a finite float score
    (a NaN, ±inf, a string, a bare float) becomes a failed verdict naming the judge and the
    problem. What comes back is safe to store and to pair on. A judge with `needs_policy` is
    given `policy` (without one, every item fails saying so)."""

    def call() -> list[Verdict]:
        if not judge.needs_policy:
            return judge.judge(items)
        if policy is None:
            raise ValueError("needs the round's policy and was called without one")
        return judge.judge(items, policy)

    return _guarded(
        judge.name,
        call,
        len(items),
        ("verdicts", "responses"),
        Verdict,
        "score",
        -math.inf,
        math.inf,
    )


def safe_compare(judge: PairwiseJudge, items: list[PairItem]) -> list[Comparison]:
    """The judge's comparisons, checked as `safe_judge` checks verdicts: each is a failed
    `Comparison` or an ok one whose `prob` is a float in [0, 1]."""
    return _guarded(
        judge.name,
        lambda: judge.compare(items),
        len(items),
        ("comparisons", "pairs"),
        Comparison,
        "prob",
        0.0,
        1.0,
    )


def symmetric_compare(judge: PairwiseJudge, items: list[PairItem]) -> list[Comparison]:
    """Compare each pair in both orders and average (ALGORITHMS.md, "Judges"):

    P_sym(a ≻ b) = ½ [P(first wins | a, b) + 1 − P(first wins | b, a)].

    `trace` records both raw probabilities and `position_flip`: the verdict changes with the
    order (the first-shown response wins, or loses, both times); for a judge whose traces say
    whether an answer came from its cache, `cached`: both orders did. A pair whose either order
    failed is a failed comparison carrying the error.
    """
    swapped = [PairItem(i.prompt, i.second, i.first) for i in items]
    both = safe_compare(judge, items + swapped)
    forward, backward = both[: len(items)], both[len(items) :]
    out = []
    for ab, ba in zip(forward, backward, strict=True):
        tokens = (ab.tokens or 0) + (ba.tokens or 0) or None
        cost = (ab.cost or 0.0) + (ba.cost or 0.0) if ab.cost is not None or ba.cost else None
        latency = (ab.latency_s or 0.0) + (ba.latency_s or 0.0)
        if ab.status != "ok" or ba.status != "ok" or ab.prob is None or ba.prob is None:
            error = ab.error if ab.status != "ok" else ba.error
            out.append(Comparison.failure(error or "comparison failed", tokens=tokens, cost=cost))
            continue
        flip = (ab.prob > 0.5) == (ba.prob > 0.5) and ab.prob != 0.5 and ba.prob != 0.5
        trace = {"p_ab": ab.prob, "p_ba": ba.prob, "position_flip": flip}
        raw = [t for t in (ab.trace, ba.trace) if t is not None and "cached" in t]
        if raw:  # a judge with a cache (the api judge): served from it only if both orders were
            trace["cached"] = len(raw) == 2 and all(t["cached"] for t in raw)
        out.append(
            Comparison(
                status="ok",
                prob=0.5 * (ab.prob + 1.0 - ba.prob),
                critique=ab.critique,
                trace=trace,
                latency_s=latency,
                tokens=tokens,
                cost=cost,
            )
        )
    return out
