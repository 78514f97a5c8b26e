"""Where a configured model lives: a local directory, or a Hugging Face hub id resolved to its
snapshot in the hub cache.

A hub id (`org/name`, with an optional revision: a branch, tag or commit) goes through
`huggingface_hub.snapshot_download`, so its cache (`HF_HOME`, `HF_HUB_CACHE`) and
`HF_HUB_OFFLINE` are honoured: offline, only a cached snapshot resolves; online, a missing one is
downloaded (weights in safetensors or .bin, tokenizer and config files; not a repository's
`original/` consolidated checkpoints or other frameworks' weights). Every failure is a
ConfigError naming the config field, raised before the loop writes anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from selfplay.config import ConfigError, JudgeConfig, SelfplayConfig

# Files of a hub repository that transformers, vLLM and SGLang never read: a Llama repo's
# original/ holds a second copy of its weights.
IGNORED_HUB_FILES = ["original/*", "*.pth", "*.onnx", "*.msgpack", "*.h5", "*.gguf", "*.ot"]


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set, read now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return constants.HF_HUB_OFFLINE or value.upper() in {"1", "ON", "YES", "TRUE"}


def _looks_like_a_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~"))


def resolve_model(source: str, revision: str | None, field: str) -> Path:
    """The local directory holding the model `source` names (a directory, or a hub id at
    `revision`); raises ConfigError naming `field` (e.g. "model.path") when it is neither a
    directory nor a hub model that can be found (offline: in the cache)."""
    local = Path(source).expanduser()
    if local.is_dir():
        if revision is not None:
            raise ConfigError(
                f"{field}: {source} is a local directory; a revision applies to hub ids only "
                "(unset the revision)"
            )
        return local
    offline = hub_offline()
    # Online, snapshot_download reports a hub it cannot reach as a model missing from the cache.
    where = " (HF_HUB_OFFLINE=1)" if offline else " (and the hub could not be reached)"
    if local.exists():
        raise ConfigError(f"{field}: {source} is not a directory")
    if _looks_like_a_path(source):
        raise ConfigError(f"{field}: {source}: no such directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ConfigError(
            f"{field}: {source} is neither a directory nor a hub id (org/name)"
        ) from None
    at = f" at revision {revision}" if revision else ""
    try:
        return Path(
            snapshot_download(
                source,
                revision=revision,
                local_files_only=offline,
                ignore_patterns=IGNORED_HUB_FILES,
            )
        )
    except LocalEntryNotFoundError:
        raise ConfigError(
            f"{field}: {source}{at} is neither a directory nor a cached hub model{where}"
        ) from None
    except GatedRepoError:
        raise ConfigError(
            f"{field}: {source} is a gated hub model: accept its terms on the hub and log in "
            "(hf auth login or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise ConfigError(f"{field}: {source} has no revision {revision}") from None
    except RepositoryNotFoundError:
        raise ConfigError(
            f"{field}: {source} is neither a directory nor a hub model (not found on the hub; "
            "a private one needs a login: hf auth login or HF_TOKEN)"
        ) from None
    except (HfHubHTTPError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{field}: cannot fetch {source}{at} from the hub: {first}") from None


def _reward_models(judge: JudgeConfig, field: str) -> list[tuple[str, str | None, str]]:
    """(path, revision, field) of the reward models `judge` (and its ensemble members) load."""
    found = []
    if judge.name == "reward_model" and judge.reward_model.path:
        rm = judge.reward_model
        found.append((rm.path, rm.revision, f"{field}.reward_model.path"))
    if judge.name == "ensemble":
        for i, member in enumerate(judge.ensemble.members):
            found += _reward_models(member, f"{field}.ensemble.members.{i}")
    return found


def check_model_sources(cfg: SelfplayConfig) -> None:
    """Resolve the policy's and every reward model's source (fetching a hub model not yet
    cached, when online), so that a bad one fails before the run's first row is written;
    raises ConfigError naming the field."""
    if cfg.model.path:
        resolve_model(cfg.model.path, cfg.model.revision, "model.path")
    for path, revision, field in _reward_models(cfg.judge, "judge"):
        resolve_model(path, revision, field)
