"""`python -m selfplay` is the `selfplay` command."""

from selfplay.cli import app

if __name__ == "__main__":
    app()
