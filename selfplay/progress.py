"""Progress reporting for long work: rich bars in a terminal, nothing in tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[[int], None]


class Reporter(Protocol):
    def bar(self, description: str, total: int) -> AbstractContextManager[Advance]:
        """A progress bar over `total` units; the context yields an advance(n) function."""
        ...

    def line(self, text: str) -> None:
        """A line of output (one per round, warnings)."""
        ...


class RichReporter:
    """Rich progress bars on the console (stderr), summary lines on stdout."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Advance]:
        """A rich progress bar, removed when done."""
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task, n)

    def line(self, text: str) -> None:
        """Print a line."""
        self.console.print(text, highlight=False)


class SilentReporter:
    """Reports nothing (library use and tests)."""

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Advance]:
        """A bar that shows nothing."""
        yield lambda n: None

    def line(self, text: str) -> None:
        """Drop the line."""


def format_accuracy(value: float | None) -> str:
    """An accuracy for people: three decimals, or "n/a" without a held-out set."""
    return "n/a" if value is None else f"{value:.3f}"


def format_evaluation(metric: str | None, figures: Mapping[str, float | None]) -> str:
    """A checkpoint's evaluation for people, in the terms of the run's metric: "held-out
    accuracy 0.625", "held-out win rate 0.640 ± 0.048 (LC 0.590)", "held-out judge score
    0.710 ± 0.030"; "n/a" for figures not measured (accuracy without a held-out set)."""
    if metric in ("win_rate", "win_rate_lc"):
        wr, se, lc = (figures.get(k) for k in ("win_rate", "win_rate_se", "win_rate_lc"))
        if wr is None:
            return "held-out win rate n/a"
        spread = f" ± {se:.3f}" if se is not None else ""
        return f"held-out win rate {wr:.3f}{spread} (LC {format_accuracy(lc)})"
    if metric == "judge_score":
        score, se = figures.get("judge_score"), figures.get("judge_score_se")
        if score is None:
            return "held-out judge score n/a"
        return f"held-out judge score {score:.3f}" + (f" ± {se:.3f}" if se is not None else "")
    return f"held-out accuracy {format_accuracy(figures.get('heldout_accuracy'))}"
