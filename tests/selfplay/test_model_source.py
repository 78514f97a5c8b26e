"""model.path as a local directory or a hub id, resolved offline through a hub cache built here
(the `models--org--name/snapshots/<sha>/` layout huggingface_hub writes) with no network."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml
from typer.testing import CliRunner

from selfplay.cli import app
from selfplay.config import ConfigError
from selfplay.model_source import resolve_model

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, chat_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline hub cache holding `org/tiny-chat` (main → SHA) with the chat model's files."""
    cache = tmp_path / "hf-home" / "hub"
    repo = cache / "models--org--tiny-chat"
    shutil.copytree(chat_model_dir, repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    (repo / "refs" / "v1").write_text(SHA)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HOME once, at import: point its constant at this cache too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_cached_hub_id_resolves_offline_to_its_snapshot(hub_cache: Path):
    from transformers import AutoModelForCausalLM

    snapshot = hub_cache / "models--org--tiny-chat" / "snapshots" / SHA
    assert resolve_model("org/tiny-chat", None, "model.path") == snapshot
    assert resolve_model("org/tiny-chat", "v1", "model.path") == snapshot
    assert resolve_model("org/tiny-chat", SHA, "model.path") == snapshot
    model = AutoModelForCausalLM.from_pretrained(resolve_model("org/tiny-chat", None, "m"))
    assert model.config.model_type == "qwen2"


def test_a_local_directory_is_itself(chat_model_dir: Path):
    assert resolve_model(str(chat_model_dir), None, "model.path") == chat_model_dir


@pytest.mark.parametrize(
    ("source", "revision", "message"),
    [
        (
            "org/not-cached",
            None,
            "model.path: org/not-cached is neither a directory nor a cached hub model "
            "(HF_HUB_OFFLINE=1)",
        ),
        (
            "org/tiny-chat",
            "v2",
            "model.path: org/tiny-chat at revision v2 is neither a directory nor a cached hub "
            "model (HF_HUB_OFFLINE=1)",
        ),
        ("./missing-dir", None, "model.path: ./missing-dir: no such directory"),
        ("/no/such/dir", None, "model.path: /no/such/dir: no such directory"),
        ("org/a/b", None, "model.path: org/a/b is neither a directory nor a hub id (org/name)"),
        ("bad id!", None, "model.path: bad id! is neither a directory nor a hub id (org/name)"),
    ],
)
def test_a_source_that_cannot_be_found_names_the_field(
    hub_cache: Path, source: str, revision: str | None, message: str
):
    with pytest.raises(ConfigError) as err:
        resolve_model(source, revision, "model.path")
    assert str(err.value) == message


def test_a_revision_on_a_local_directory_is_refused(chat_model_dir: Path):
    with pytest.raises(ConfigError, match="model.path: .* a revision applies to hub ids only"):
        resolve_model(str(chat_model_dir), "main", "model.path")


def _run(tmp_path: Path, config: dict) -> tuple[int, str]:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["run", str(path), "--rounds", "1"], env={"COLUMNS": "300"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"model": {"path": "org/not-cached"}},
            "model.path: org/not-cached is neither a directory nor a cached hub model "
            "(HF_HUB_OFFLINE=1)",
        ),
        (
            {
                "judge": {
                    "name": "reward_model",
                    "reward_model": {"path": "org/tiny-chat", "revision": "nope"},
                }
            },
            "judge.reward_model.path: org/tiny-chat at revision nope is neither a directory nor "
            "a cached hub model (HF_HUB_OFFLINE=1)",
        ),
    ],
)
def test_run_with_a_model_it_cannot_find_exits_2_before_any_row(
    tmp_path: Path, hub_cache: Path, section: dict, message: str
):
    store = tmp_path / "out" / "selfplay.db"
    config = {"run": {"output_dir": str(tmp_path / "out")}, "store": {"url": f"sqlite:///{store}"}}
    code, output = _run(tmp_path, config | section)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in output, output
    assert message in lines[0]
    assert not store.exists() and not (tmp_path / "out").exists()


def test_the_initial_policy_of_a_hub_id_is_its_cached_snapshot(hub_cache: Path):
    from selfplay.config import parse_config
    from selfplay.sft import prepare_policy
    from selfplay.tasks import make_task

    cfg = parse_config({"model": {"path": "org/tiny-chat", "revision": "v1"}})
    path = prepare_policy(cfg.model, make_task(cfg.task, 0), seed=0)
    assert path == hub_cache / "models--org--tiny-chat" / "snapshots" / SHA
