"""Judge names are checked at config load without importing the judge; what only the import can
tell fails when the judge is built, as a ConfigError on judge.name too."""

from __future__ import annotations

import sys

import pytest

from selfplay.config import ConfigError, parse_config
from selfplay.judge_names import BUILTIN_JUDGES, available_judges, unknown_judge


def test_builtins_are_known_without_importing_them():
    assert all(unknown_judge(name) is None for name in BUILTIN_JUDGES)
    assert set(BUILTIN_JUDGES) <= set(available_judges())


def test_unknown_name_lists_the_known_ones():
    reason = unknown_judge("verifer")
    assert reason is not None and reason.startswith("unknown judge 'verifer'; known: ")
    assert "verifier" in reason and "package.module:attr" in reason


def test_module_attr_module_is_found_not_imported(tmp_path, monkeypatch):
    (tmp_path / "unimportable_judge.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(tmp_path)
    assert unknown_judge("unimportable_judge:Judge") is None
    assert "unimportable_judge" not in sys.modules
    assert unknown_judge("no_such_mod:Judge") == (
        "cannot find module 'no_such_mod' for judge 'no_such_mod:Judge'"
    )
    assert "cannot find module 'no_such_pkg.judges'" in unknown_judge("no_such_pkg.judges:J")
    assert unknown_judge(":Judge") == "judge ':Judge': expected 'package.module:attr'"


def test_config_load_names_the_field():
    with pytest.raises(ConfigError, match="judge.name: cannot find module 'no_such_mod'"):
        parse_config({"judge": {"name": "no_such_mod:Judge"}})
    members = [{"name": "verifier"}, {"name": "verifer"}]
    with pytest.raises(ConfigError, match=r"judge.ensemble.members.1.name: unknown judge"):
        parse_config({"judge": {"name": "ensemble", "ensemble": {"members": members}}})


def test_a_missing_attribute_fails_when_the_judge_is_built():
    from selfplay.judges import JudgeEnv, make_judge

    cfg = parse_config({"judge": {"name": f"{__name__}:Nope"}})  # the module exists
    with pytest.raises(ConfigError) as err:
        make_judge(cfg.judge, JudgeEnv(task=None))
    assert str(err.value) == f"judge.name: module {__name__!r} has no attribute 'Nope'"
