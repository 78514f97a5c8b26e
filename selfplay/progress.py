"""Progress reporting for long work: rich bars in a terminal, nothing in tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
