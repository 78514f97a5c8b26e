"""The CLI in-process: db upgrade, status, and clean errors (exit codes, no tracebacks)."""

from __future__ import annotations

from typer.testing import CliRunner

from db.engine import make_engine, session_factory, transaction
from db.migrate import head_revision
from db.models import Checkpoint, Round, Run
from selfplay.cli import app

runner = CliRunner()


def test_db_upgrade_then_status_shows_rounds(db_url):
    result = runner.invoke(app, ["db", "upgrade", "--db", db_url])
    assert result.exit_code == 0 and f"revision {head_revision()}" in result.output
    engine = make_engine(db_url)
    with transaction(session_factory(engine)) as s:
        run = Run(name="demo", config={})
        s.add(run)
        s.flush()
        ckpt = Checkpoint(run_id=run.id, round_index=-1, path="/x", heldout_accuracy=0.25)
        s.add(ckpt)
        s.flush()
        s.add(Round(run_id=run.id, index=0, policy_checkpoint_id=ckpt.id, status="judging"))
    engine.dispose()
    result = runner.invoke(app, ["status", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "run demo" in result.output and "judging" in result.output and "0.250" in result.output
    missing = runner.invoke(app, ["status", "--db", db_url, "--run", "nope"])
    assert missing.exit_code == 1 and "no run named 'nope'" in missing.output


def test_status_on_an_empty_store_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["status", "--db", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert result.exit_code == 1 and "no selfplay store" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_run_with_a_bad_config_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("generation:\n  samples_per_prompt: 0\n")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "generation.samples_per_prompt" in result.output
    assert "Traceback" not in result.output
