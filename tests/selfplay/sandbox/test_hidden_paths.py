"""What sandboxed code can read: the interpreter, its libraries and its own directory, not the
home directory, a run's output directory, the store or the caller's working directory, even
where those are world-readable; and the code task and the tool critic work as before."""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.engine import make_engine, session_factory, transaction
from db.migrate import upgrade
from db.models import Run
from selfplay.config import JudgeConfig
from selfplay.judges import JudgeEnv, JudgeItem
from selfplay.judges.tool import ToolJudge
from selfplay.sandbox import Limits, SandboxResult, run_python
from selfplay.tasks import CodeTask

SECRET = f"canary-{uuid.uuid4().hex}"


@pytest.fixture
def readable_tree() -> Iterator[dict[str, Path]]:
    """A world-readable home with a dotfile and a run's output directory holding a real store
    (a migrated SQLite database with the secret in a run's config), as an unprotected machine
    would have them."""
    base = Path(tempfile.mkdtemp(prefix="selfplay-canary-"))
    home, out = base / "home" / "someone", base / "runs" / "demo"
    home.mkdir(parents=True)
    out.mkdir(parents=True)
    (home / ".netrc").write_text(f"machine broker password {SECRET}\n")
    (out / "checkpoint.txt").write_text(SECRET)
    store = out / "store.db"
    engine = make_engine(f"sqlite:///{store}")
    upgrade(engine)
    with transaction(session_factory(engine)) as s:
        s.add(Run(name="demo", config={"executor": {"broker_url": f"redis://u:{SECRET}@h/0"}}))
    engine.dispose()
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield {"home": home, "runs": out, "store": store}
    shutil.rmtree(base)


def probe(paths: list[Path | str]) -> SandboxResult:
    """Run code that tries to list or read each path and prints what it got (for a file: its
    size, and the secret if the file holds it)."""
    code = f"""
    import os
    for path in {[str(p) for p in paths]!r}:
        try:
            if os.path.isdir(path):
                print("LISTED", path, sorted(os.listdir(path)))
            else:
                with open(path, "rb") as fh:
                    data = fh.read()
                found = {SECRET.encode()!r} in data
                print("READ", path, len(data), "bytes", {SECRET!r} if found else "")
        except OSError as err:
            print("hidden", path, type(err).__name__)
    """
    return run_python(textwrap.dedent(code), Limits(wall_timeout_s=10))


def test_home_runs_store_and_the_callers_directory_are_not_visible(readable_tree):
    home, out, store = readable_tree["home"], readable_tree["runs"], readable_tree["store"]
    wal = store.with_name(store.name + "-wal")
    targets = [home, home / ".netrc", out, out / "checkpoint.txt", store, wal, os.getcwd()]
    res = probe(targets)
    if not res.containment.get("mount_namespace"):
        pytest.skip("no mount namespace here: the code sees what its uid may read")
    assert res.ok, res.stderr
    assert "READ" not in res.stdout and "LISTED" not in res.stdout, res.stdout
    assert res.stdout.count("hidden") == len(targets)
    assert SECRET not in res.stdout + res.stderr
    assert res.containment["private_root"]


def test_the_interpreter_and_its_libraries_still_work():
    res = run_python(
        textwrap.dedent(
            """
            import json, math, os, random, re, sqlite3, subprocess, sys
            db = sqlite3.connect("scratch.db")
            db.execute("create table t (x)")
            print(json.dumps([math.sqrt(16), random.Random(0).random() < 1, sys.flags.isolated]))
            print(sorted(os.listdir(".")))
            print(open("/dev/null").read() == "", len(os.urandom(4)))
            """
        )
    )
    assert res.ok, res.stderr
    first, listing, devices = res.stdout.splitlines()
    assert first == "[4.0, true, 1]"
    assert listing == "['main.py', 'scratch.db']"  # nothing of the sandbox's own making
    assert devices == "True 4"


def test_the_code_task_verifies_and_the_tool_trace_keeps_what_the_code_printed():
    task = CodeTask(0, 100)
    prompt = task.heldout_prompts()[0]
    assert task.verify(prompt, task.reference_response(prompt)) == (True, "all 8 tests passed")
    ok, critique = task.verify(prompt, "def f(x): return 0")
    assert not ok and "failed: expected" in critique

    body = task.reference_response(prompt).split("return ", 1)[1]
    chatty = f"def f(x):\n    print('f called with', x)\n    return {body}\n"
    judge = ToolJudge(JudgeConfig(name="tool"), JudgeEnv(task=task))
    (verdict,) = judge.judge([JudgeItem(prompt, f"```python\n{chatty}```")])
    assert verdict.status == "ok" and verdict.score == 1.0, verdict
    run = verdict.trace["run"]
    assert "f called with -7" in run["stdout"] and "f called with 100" in run["stdout"]
    if run["containment"].get("mount_namespace"):
        assert run["containment"]["private_root"]
