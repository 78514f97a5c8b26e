"""Fault injection for crash-resume tests: SIGKILL this process at a chosen commit.

`SELFPLAY_KILL_AT=<stage>:<n>` kills the process right after the n-th commit (1-based) made
by that stage. Unset (the normal case) it does nothing. The resume tests use it to land a real
SIGKILL inside each stage deterministically.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_commits: Counter[str] = Counter()


def commit_point(stage: str) -> None:
    """Mark a commit made by `stage`; kill the process here if SELFPLAY_KILL_AT says so."""
    spec = os.environ.get("SELFPLAY_KILL_AT")
    if not spec:
        return
    _commits[stage] += 1
    target, _, count = spec.partition(":")
    if target == stage and _commits[stage] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
