"""The typed config tree: one pydantic model per concern, nested under `SelfplayConfig`.

Loaded from YAML; URLs and secrets may be overridden from the environment (`SELFPLAY_DB_URL`).
Every consumer receives its own sub-config, never a raw dict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(_Strict):
    name: str = Field("quickstart", min_length=1, description="Run name; one run row per name.")
    seed: int = Field(0, description="Seed for prompts, sampling, pairing and training.")
    rounds: int = Field(10, ge=1, description="Number of self-improvement rounds.")
    output_dir: Path = Field(Path("runs/quickstart"), description="Checkpoints are written here.")


class StoreConfig(_Strict):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL; default sqlite:///<output_dir>/selfplay.db. Env: SELFPLAY_DB_URL.",
    )


class TaskConfig(_Strict):
    name: Literal["arithmetic", "jsonl"] = Field("arithmetic", description="Prompt source.")
    prompts_per_round: int = Field(2048, ge=1, description="Fresh train prompts drawn each round.")
    heldout_size: int = Field(500, ge=1, description="Size of the fixed held-out set.")
    path: Path | None = Field(None, description="JSONL file of {'prompt': ...} lines (task jsonl).")

    @model_validator(mode="after")
    def _jsonl_needs_path(self) -> TaskConfig:
        if self.name == "jsonl" and self.path is None:
            raise ValueError("task.path is required when task.name is 'jsonl'")
        return self


class TinyModelConfig(_Strict):
    hidden_size: int = Field(128, ge=8, description="Hidden width of the tiny Llama.")
    num_layers: int = Field(4, ge=1, description="Decoder layers.")
    num_heads: int = Field(2, ge=1, description="Attention heads.")
    intermediate_size: int = Field(384, ge=8, description="MLP width.")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("model.tiny.hidden_size must be divisible by model.tiny.num_heads")
        return self


class SFTConfig(_Strict):
    steps: int = Field(2000, ge=0, description="Supervised steps on correct answers (0: none).")
    batch_size: int = Field(32, ge=1, description="Sequences per SFT step.")
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate (warmup, cosine decay).")
    target_accuracy: float | None = Field(
        0.3,
        gt=0,
        le=1,
        description="Stop early once greedy accuracy on a validation draw of train prompts "
        "reaches this (a weak start for the loop to improve); None: run all steps.",
    )


class ModelConfig(_Strict):
    path: str | None = Field(
        None, description="A local Hugging Face model directory; unset: build the tiny model."
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    cache_dir: Path = Field(
        Path("~/.cache/selfplay"),
        description="Where the built and SFT-trained tiny model is cached. Env: SELFPLAY_CACHE_DIR.",
    )


class GenerationConfig(_Strict):
    backend: Literal["hf"] = Field("hf", description="Generation backend.")
    samples_per_prompt: int = Field(8, ge=1, description="K samples per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(8, ge=1, description="Generation length limit.")
    prompts_per_batch: int = Field(256, ge=1, description="Prompts per generation chunk.")


class JudgeConfig(_Strict):
    name: Literal["verifier"] = Field("verifier", description="Judge that labels responses.")


class PairingConfig(_Strict):
    builder: Literal["max_min"] = Field("max_min", description="Pair builder.")
    max_pairs_per_prompt: int = Field(2, ge=1, description="At most this many pairs per prompt.")


class TrainingConfig(_Strict):
    loss: Literal["dpo", "rft"] = Field("dpo", description="Objective.")
    beta: float = Field(0.1, gt=0, description="DPO inverse temperature β.")
    nll_weight: float = Field(0.0, ge=0, description="α of the NLL-on-chosen term.")
    reference: Literal["previous", "sft"] = Field(
        "previous", description="Reference policy: the round's starting policy or the SFT model."
    )
    lr: float = Field(3e-4, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(32, ge=1, description="Pairs per optimizer step.")
    max_steps: int = Field(300, ge=1, description="At most this many steps per round.")
    epochs: int = Field(1, ge=1, description="Passes over the round's pairs (capped by max_steps).")
    warmup_steps: int = Field(
        0, ge=0, description="Linear learning-rate warmup at each round's start."
    )
    grad_clip: float = Field(1.0, gt=0, description="Max gradient norm.")


class EvaluationConfig(_Strict):
    batch_size: int = Field(500, ge=1, description="Prompts per greedy evaluation batch.")


class ExecutorConfig(_Strict):
    broker_url: str | None = Field(
        None,
        description="Celery broker (redis://host:6379/0); unset: run every stage in-process. "
        "Env: SELFPLAY_BROKER_URL.",
    )
    result_backend: str | None = Field(
        None,
        description="Celery result backend; default: the broker. Env: SELFPLAY_RESULT_BACKEND.",
    )
    key_prefix: str = Field(
        "", description="Prefix on every Redis key, so several deployments can share one Redis."
    )
    visibility_timeout_s: int = Field(
        3600,
        ge=1,
        description="Seconds before an unacknowledged task is redelivered: longer than the "
        "longest task (a round's training).",
    )
    max_retries: int = Field(3, ge=0, description="Retries of a failing task (with backoff).")
    retry_backoff_max_s: int = Field(60, ge=1, description="Longest wait between two retries.")
    poll_interval_s: float = Field(0.5, gt=0, description="How often the driver polls results.")


class SelfplayConfig(_Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    pairing: PairingConfig = Field(default_factory=PairingConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @model_validator(mode="after")
    def _distributed_needs_shared_paths(self) -> SelfplayConfig:
        if self.executor.broker_url and not self.run.output_dir.is_absolute():
            raise ValueError(
                "run.output_dir must be an absolute path (a directory every worker mounts) "
                "when executor.broker_url is set"
            )
        return self

    @property
    def db_url(self) -> str:
        """The store URL: configured, or an SQLite file in the run's output directory."""
        return self.store.url or f"sqlite:///{self.run.output_dir / 'selfplay.db'}"


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names the file and the field."""


# Environment variables that override a field (URLs and secrets only).
ENV_OVERRIDES = {
    "SELFPLAY_DB_URL": ("store", "url"),
    "SELFPLAY_CACHE_DIR": ("model", "cache_dir"),
    "SELFPLAY_BROKER_URL": ("executor", "broker_url"),
    "SELFPLAY_RESULT_BACKEND": ("executor", "result_backend"),
}


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "<dict>") -> SelfplayConfig:
    """Validate a mapping into a config, applying environment overrides; raises ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping")
    for var, (section, key) in ENV_OVERRIDES.items():
        if os.environ.get(var):
            sub = data.setdefault(section, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"invalid config {source}: {section}: must be a mapping")
            sub[key] = os.environ[var]
    try:
        return SelfplayConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(source, err)) from None


def load_config(path: Path | str) -> SelfplayConfig:
    """Load a YAML config file; raises ConfigError naming the file and the field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML in {path}: {err}") from None
    return parse_config(data, str(path))
