"""The `selfplay` command line: subcommands map one-to-one to library functions."""

import typer

from selfplay.cli import loop, store

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.command()(loop.run)
app.command()(store.status)
app.command()(loop.judge)
app.command()(loop.worker)
app.add_typer(store.db_app, name="db")
app.command()(store.dashboard)

__all__ = ["app"]
