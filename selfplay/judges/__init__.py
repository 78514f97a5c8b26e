"""Judges by name: built-ins, the entry-point group `selfplay.judges`, or `module:attr`.

A judge factory is any callable `(JudgeConfig, JudgeEnv) -> Judge` (a judge class whose
constructor takes those two arguments is one). `resolve_factory` imports it; the config
validates the name without importing anything (selfplay.judge_names) when it loads, so a typo
fails before the run starts, and `make_judge` reports what only the import can tell (a missing
attribute, a plug-in that does not load) as a ConfigError on `judge.name`.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import replace
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from selfplay.judge_names import BUILTIN_JUDGES, ENTRY_POINT_GROUP, available_judges
from selfplay.judges.base import (
    BaseJudge,
    Comparison,
    Judge,
    JudgeEnv,
    JudgeFactory,
    JudgeItem,
    PairItem,
    PairwiseJudge,
    Policy,
    Verdict,
    safe_compare,
    safe_judge,
    symmetric_compare,
)

if TYPE_CHECKING:
    from selfplay.config import JudgeConfig


class JudgeNotFound(LookupError):
    """A judge name that is no built-in, no installed entry point and no importable module:attr."""


def _import_attr(spec: str) -> JudgeFactory:
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise JudgeNotFound(
            f"cannot import module {module_name!r} for judge {spec!r}: {err}"
        ) from err
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise JudgeNotFound(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise JudgeNotFound(f"judge {spec!r} is not callable (expected a factory or a class)")
    return obj


def resolve_factory(name: str) -> JudgeFactory:
    """The factory for a judge name: a built-in, an entry point of `selfplay.judges`, or an
    explicit `package.module:attr`. Raises JudgeNotFound with the known names otherwise."""
    if name in BUILTIN_JUDGES:
        return _import_attr(BUILTIN_JUDGES[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            return ep.load()
        except Exception as err:  # a broken plug-in: say which, and why
            raise JudgeNotFound(f"entry point {name!r} ({ep.value}) failed to load: {err}") from err
    if ":" in name:
        return _import_attr(name)
    known = ", ".join(sorted(available_judges()))
    raise JudgeNotFound(f"unknown judge {name!r}; known: {known}; or give 'package.module:attr'")


class PluginJudge(BaseJudge):
    """A third-party judge given the protocol's defaults for what it does not declare
    (`needs_siblings`, `needs_policy`, `close`): read once, when it is built."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        self.needs_siblings = bool(getattr(inner, "needs_siblings", False))
        self.needs_policy = bool(getattr(inner, "needs_policy", False))
        self._close = getattr(inner, "close", None)

    def judge(self, items: list[JudgeItem], policy: Policy | None = None) -> list[Verdict]:
        """The plug-in's verdicts (unchecked: callers use `safe_judge`)."""
        if self.needs_policy:
            return self.inner.judge(items, policy)
        return self.inner.judge(items)

    def close(self) -> None:
        """The plug-in's own `close`, if it has one."""
        if self._close is not None:
            self._close()

    def __getattr__(self, name: str) -> object:
        # Everything else (`compare` of a pairwise plug-in, its own attributes) is the plug-in's.
        if name == "inner":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class NoisyJudge(BaseJudge):
    """Label noise for robustness experiments: flips a fraction of a 0/1 judge's verdicts.

    Whether a verdict flips is a deterministic function of (seed, prompt, response), so a
    resumed run flips the same ones; score s becomes 1 − s. Failed verdicts pass unchanged.
    """

    def __init__(self, inner: Judge, flip_rate: float, seed: int) -> None:
        self.inner, self.flip_rate, self.seed = inner, flip_rate, seed
        self.name = inner.name
        # The inner judge still gets the siblings it scores against and the policy it asks.
        self.needs_siblings = inner.needs_siblings
        self.needs_policy = inner.needs_policy

    def close(self) -> None:
        """Close the inner judge."""
        self.inner.close()

    def _flips(self, item: JudgeItem) -> bool:
        key = f"{self.seed}\0{item.prompt.text}\0{item.response}".encode()
        draw = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
        return draw < self.flip_rate

    def judge(self, items: list[JudgeItem], policy: Policy | None = None) -> list[Verdict]:
        """The inner judge's verdicts, a `flip_rate` fraction of them flipped."""
        verdicts = safe_judge(self.inner, items, policy)
        return [
            replace(
                v,
                score=1.0 - v.score,
                critique=f"{v.critique or ''} [label flipped: noise]".strip(),
            )
            if v.status == "ok" and v.score is not None and self._flips(item)
            else v
            for item, v in zip(items, verdicts, strict=True)
        ]


def make_judge(cfg: JudgeConfig, env: JudgeEnv) -> Judge:
    """Build the configured judge (wrapped in label noise if cfg.flip_rate > 0). A name whose
    factory cannot be imported, and a factory that raises, are ConfigErrors naming `judge.name`
    (the CLI's exit 2), not a traceback."""
    from selfplay.config import ConfigError

    try:
        factory = resolve_factory(cfg.name)
    except JudgeNotFound as err:
        raise ConfigError(f"judge.name: {err}") from err
    try:
        judge = factory(cfg, env)
    except ConfigError:
        raise
    except Exception as err:  # a plug-in's constructor: the user's code, the user's error
        raise ConfigError(
            f"judge.name: the factory of judge {cfg.name!r} raised {type(err).__name__}: {err}"
        ) from err
    if not isinstance(judge, BaseJudge):
        judge = PluginJudge(judge)
    return NoisyJudge(judge, cfg.flip_rate, env.seed) if cfg.flip_rate > 0 else judge


__all__ = [
    "BUILTIN_JUDGES",
    "BaseJudge",
    "ENTRY_POINT_GROUP",
    "Comparison",
    "Judge",
    "JudgeEnv",
    "JudgeFactory",
    "JudgeItem",
    "JudgeNotFound",
    "NoisyJudge",
    "PairItem",
    "PairwiseJudge",
    "PluginJudge",
    "Policy",
    "Verdict",
    "available_judges",
    "make_judge",
    "resolve_factory",
    "safe_compare",
    "safe_judge",
    "symmetric_compare",
]
