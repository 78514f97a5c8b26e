"""Config loading: every shipped YAML loads; bad configs name the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from selfplay.config import ConfigError, SelfplayConfig, load_config, parse_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), SelfplayConfig)


@pytest.mark.parametrize(
    "data,field,message",
    [
        ({"training": {"beta": 0}}, "training.beta", "greater than 0"),
        ({"training": {"beta": -1.0}}, "training.beta", "greater than 0"),
        ({"training": {"bta": 0.1}}, "training.bta", "unknown key"),
        ({"trainig": {}}, "trainig", "unknown key"),
        ({"training": {"loss": "dpoo"}}, "training.loss", "unknown loss 'dpoo'; known: dpo,"),
        ({"pairing": {"builder": "maxmin"}}, "pairing.builder", "unknown pair builder 'maxmin'"),
        ({"algorithm": "dpoo"}, "algorithm", "unknown algorithm 'dpoo'; known: dpo, dpo+nll,"),
        ({"training": {"loss": "inpo"}}, "training", "must be 'sft' for loss inpo"),
        (
            {"training": {"loss": "sppo"}},
            "(root)",
            "loss sppo needs win-probability targets: use pairing.builder 'sppo'",
        ),
        (
            {"algorithm": "xpo", "generation": {"reference_samples": 0}},
            "(root)",
            "generation.reference_samples must be >= 1 for the xpo builder",
        ),
        (
            {"generation": {"samples_per_prompt": "many"}},
            "generation.samples_per_prompt",
            "integer",
        ),
        ({"generation": {"top_p": 1.5}}, "generation.top_p", "less than or equal to 1"),
        ({"task": {"name": "jsonl"}}, "task", "task.path is required"),
        ({"model": {"tiny": {"hidden_size": 10, "num_heads": 3}}}, "model.tiny", "divisible"),
        ({"revise": {"prompt_template": "{prompt} {answer}"}}, "revise", "KeyError 'answer'"),
        ({"revise": {"prompt_template": "{prompt} {"}}, "revise", "braces doubled"),
        ({"revise": {"max_per_round": 0}}, "revise.max_per_round", "greater than or equal to 1"),
        (
            {"revise": {"enabled": True}, "algorithm": "sppo"},
            "(root)",
            "does not combine with the sppo builder",
        ),
        (
            {"revise": {"enabled": True}, "algorithm": "xpo"},
            "(root)",
            "does not combine with the xpo builder",
        ),
    ],
)
def test_bad_config_names_the_field(data, field, message):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "x.yaml")
    text = str(err.value)
    assert "x.yaml" in text and f"  {field}:" in text and message in text


def test_yaml_errors_and_missing_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML in .*bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(top)


def test_environment_overrides_urls(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFPLAY_DB_URL", "postgresql+psycopg://u@h/db")
    cfg = parse_config({"store": {"url": "sqlite:///other.db"}})
    assert cfg.db_url == "postgresql+psycopg://u@h/db"
    monkeypatch.delenv("SELFPLAY_DB_URL")
    cfg = parse_config({"run": {"output_dir": str(tmp_path)}})
    assert cfg.db_url == f"sqlite:///{tmp_path / 'selfplay.db'}"


def test_algorithm_must_be_a_preset_name():
    with pytest.raises(ConfigError) as err:
        parse_config({"algorithm": {"name": "rdpo", "epsilon": 0.5}}, "x.yaml")
    text = str(err.value)
    assert (
        "x.yaml" in text and "  algorithm: expected a preset name (string), got a mapping" in text
    )


@pytest.mark.parametrize(
    "url,message",
    [
        ("notadb://x", "unsupported database 'notadb'"),
        ("mysql://u:hunter2@h/db", "unsupported database 'mysql'"),
        ("not a url", "not a database URL"),
    ],
)
def test_store_url_is_validated_at_load(url, message):
    with pytest.raises(ConfigError) as err:
        parse_config({"store": {"url": url}}, "x.yaml")
    text = str(err.value)
    assert "  store.url:" in text and message in text
    assert "hunter2" not in text


@pytest.mark.parametrize(
    "url", ["sqlite:///x.db", "sqlite+pysqlite:///:memory:", "postgresql+psycopg://u:p@h/db"]
)
def test_supported_store_urls_load(url):
    assert parse_config({"store": {"url": url}}).store.url == url


def test_bad_store_url_from_environment(monkeypatch):
    monkeypatch.setenv("SELFPLAY_DB_URL", "notadb://x")
    with pytest.raises(ConfigError, match="store.url: unsupported database"):
        parse_config({})


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_config_file(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"empty\.yaml: the config file is empty"):
        load_config(path)


HEAVY = ("openai", "aiohttp", "torch", "transformers", "vllm", "sglang", "selfplay.judges")
HEAVY_PACKAGES = tuple(f"{name}." for name in HEAVY)


def test_loading_a_config_imports_no_judge_engine_or_torch(tmp_path):
    api = {"name": "api", "api": {"model": "judge-model"}}
    reward_model = {"name": "reward_model", "reward_model": {"path": "some/model"}}
    path = tmp_path / "api.yaml"
    path.write_text(
        json.dumps(
            {
                "judge": {"name": "ensemble", "ensemble": {"members": [api, reward_model]}},
                "generation": {"backend": "vllm"},
                "algorithm": "xpo",
            }
        )
    )
    code = (
        "import json, sys; from selfplay.config import load_config; "
        f"load_config({str(path)!r}); print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy = [m for m in json.loads(out.stdout) if m in HEAVY or m.startswith(HEAVY_PACKAGES)]
    assert heavy == []
