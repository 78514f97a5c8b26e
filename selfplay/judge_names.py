"""Judge names, checked without importing any judge: the built-ins, the installed entry points
of the group `selfplay.judges`, and `package.module:attr`.

The config validates `judge.name` here when it loads, so a typo fails before the run starts and
loading a config imports no judge (nor openai, torch, transformers). `selfplay.judges` imports
the named factory when the judge is built; failures there (a missing attribute, a plug-in that
does not load) are ConfigErrors on `judge.name` too.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "selfplay.judges"

# Built-in judges, imported only when used (their dependencies are optional extras).
BUILTIN_JUDGES: dict[str, str] = {
    "verifier": "selfplay.judges.verifier:VerifierJudge",
    "tool": "selfplay.judges.tool:ToolJudge",
    "api": "selfplay.judges.api:ApiJudge",
    "self": "selfplay.judges.self_judge:SelfJudge",
    "reward_model": "selfplay.judges.reward_model:RewardModelJudge",
    "ensemble": "selfplay.judges.ensemble:EnsembleJudge",
}


def available_judges() -> dict[str, str]:
    """Every judge name this installation knows: built-ins and entry points → their target."""
    names = dict(BUILTIN_JUDGES)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name, ep.value)
    return names


def unknown_judge(name: str) -> str | None:
    """Why `name` names no judge, or None if it does. A `module:attr` name's module is looked
    up, not imported (its parent packages are, as importlib.util.find_spec does); whether it has
    the attribute is checked when the judge is built."""
    if name in BUILTIN_JUDGES or entry_points(group=ENTRY_POINT_GROUP, name=name):
        return None
    if ":" in name:
        module, _, attr = name.partition(":")
        if not module or not attr:
            return f"judge {name!r}: expected 'package.module:attr'"
        try:
            found = importlib.util.find_spec(module) is not None
        except Exception as err:  # a parent package that is missing or fails to import
            return f"cannot find module {module!r} for judge {name!r}: {err}"
        return None if found else f"cannot find module {module!r} for judge {name!r}"
    known = ", ".join(sorted(available_judges()))
    return f"unknown judge {name!r}; known: {known}; or give 'package.module:attr'"
