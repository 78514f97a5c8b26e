"""What every `selfplay` command shares: the consoles, clean exits, and opening the store.

Every store URL a command prints has its password masked (`selfplay.redact`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from db.runs import InspectError
from selfplay.config import ConfigError, SelfplayConfig, load_config
from selfplay.redact import mask_text, mask_url

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

out = Console()
err = Console(stderr=True)

DEFAULT_DB = SelfplayConfig().db_url

DbOption = Annotated[
    str | None,
    typer.Option("--db", help=f"Store URL (default: $SELFPLAY_DB_URL or {DEFAULT_DB})."),
]


def fail(message: str, code: int) -> typer.Exit:
    """Print `message` as an error; the exit to raise, with status `code`."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def config_or_exit(path: Path) -> SelfplayConfig:
    """The config at `path`, or a clean exit 2 naming what is wrong with it."""
    try:
        return load_config(path)
    except ConfigError as e:
        raise fail(str(e), 2) from None


def db_url(db: str | None) -> str:
    """The store URL a command uses: `--db`, else $SELFPLAY_DB_URL, else the default."""
    return db or os.environ.get("SELFPLAY_DB_URL") or DEFAULT_DB


def _first_line(e: BaseException) -> str:
    """`Type: message`, its first line only (SQLAlchemy appends a background link)."""
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0] if text else ''}"


def open_store(db: str | None) -> Engine:
    """The engine of a current selfplay store, or a clean exit: 2 for a URL that names no
    database selfplay can open (`--db`), 1 for a store that is unreachable, absent or behind
    this selfplay's schema. Messages carry the URL with its password masked."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import ArgumentError, OperationalError

    from db.engine import make_engine
    from db.migrate import check_current

    url = db_url(db)
    shown = mask_url(url)
    try:
        engine = make_engine(url)
    except (ArgumentError, ImportError) as e:
        raise fail(
            mask_text(f"--db: cannot open store {shown}: {_first_line(e)}", url), 2
        ) from None
    try:
        has_store = inspect(engine).has_table("runs")
    except OperationalError as e:
        engine.dispose()
        raise fail(mask_text(f"cannot open store {shown}: {_first_line(e)}", url), 1) from None
    if not has_store:
        engine.dispose()
        raise fail(f"no selfplay store at {shown} (run `selfplay run` first)", 1)
    try:
        check_current(engine, shown)
    except RuntimeError as e:
        engine.dispose()
        raise fail(str(e), 1) from None
    return engine


@contextmanager
def store_session(db: str | None) -> Iterator[Session]:
    """A session on the store (`open_store`'s exits), or a clean exit 1 for a bad filter or an
    unknown name or id."""
    engine = open_store(db)
    try:
        with Session(bind=engine) as s:
            yield s
    except InspectError as e:
        raise fail(str(e), 1) from None
    finally:
        engine.dispose()
