"""Passwords in store and broker URLs are masked wherever they are stored or printed."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from db.engine import make_engine, session_factory
from db.migrate import upgrade
from db.models import Run
from selfplay.cli import app
from selfplay.config import parse_config
from selfplay.driver import ensure_run
from selfplay.redact import mask_config, mask_text, mask_url

PASSWORD = "hunter22-secret"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://user:pw@h:6379/0", "redis://user:***@h:6379/0"),
        ("redis://:s3cr%40t@h/0", "redis://:***@h/0"),
        (
            "postgresql+psycopg://u:p@127.0.0.1:5432/db",
            "postgresql+psycopg://u:***@127.0.0.1:5432/db",
        ),
        ("postgresql+psycopg://u@127.0.0.1/db", "postgresql+psycopg://u@127.0.0.1/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str, masked: str):
    assert mask_url(url) == masked


def test_mask_text_masks_the_url_and_the_bare_password():
    url = f"postgresql://u:{PASSWORD}@h/db"
    text = mask_text(f"failed for {url}: password {PASSWORD} rejected", url)
    assert PASSWORD not in text and "postgresql://u:***@h/db" in text


def test_the_stored_config_has_no_password_and_still_resumes(tmp_path):
    """runs.config keeps the store and broker URLs without their passwords; a resume with the
    same (unmasked) config compares equal to it."""
    store = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(make_engine(store))
    cfg = parse_config(
        {
            "run": {"output_dir": str(tmp_path / "out")},
            "store": {"url": f"postgresql+psycopg://selfplay:{PASSWORD}@127.0.0.1:5432/test"},
            "executor": {
                "broker_url": f"redis://:{PASSWORD}@127.0.0.1:6379/0",
                "result_backend": f"redis://user:{PASSWORD}@127.0.0.1:6379/1",
            },
        }
    )
    sessions = session_factory(make_engine(store))
    run_id = ensure_run(sessions, cfg)
    assert ensure_run(sessions, cfg) == run_id  # resumes: equal config
    with sessions() as s:
        stored = s.scalar(select(Run.config).where(Run.id == run_id))
    assert PASSWORD not in json.dumps(stored)
    assert stored["store"]["url"] == "postgresql+psycopg://selfplay:***@127.0.0.1:5432/test"
    assert stored["executor"]["broker_url"] == "redis://:***@127.0.0.1:6379/0"
    assert mask_config(cfg.model_dump(mode="json")) == stored


def test_status_on_a_bad_or_unreachable_store_is_one_line_without_the_password():
    runner = CliRunner()
    bad = runner.invoke(app, ["status", "--db", "notadb://x"])
    assert bad.exit_code == 2, bad.output
    assert "--db: cannot open store notadb://x" in bad.output
    assert bad.exception is None or isinstance(bad.exception, SystemExit)
    missing = f"postgresql+psycopg://selfplay:{PASSWORD}@127.0.0.1:5432/no_such_database_here"
    gone = runner.invoke(app, ["status", "--db", missing])
    assert gone.exit_code == 1, gone.output
    assert "selfplay:***@127.0.0.1" in gone.output and "Background" not in gone.output
    assert PASSWORD not in gone.output
    assert gone.exception is None or isinstance(gone.exception, SystemExit)
