"""The read-only web dashboard of a preference store (`selfplay dashboard`)."""

from selfplay.dashboard.app import create_app

__all__ = ["create_app"]
