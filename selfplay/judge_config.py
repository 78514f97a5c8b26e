"""The `judge` section: which judge labels responses, and each built-in judge's options.

Validated without importing any judge: the name against `selfplay.judge_names`, each section's
fields here. What needs the judge's own code (a plug-in's attribute, an API key in the
environment) is checked when `selfplay.judges.make_judge` builds it, as a ConfigError too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from selfplay.config_base import StrictConfig
from selfplay.judge_names import unknown_judge


class ApiJudgeConfig(StrictConfig):
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


class ToolJudgeConfig(StrictConfig):
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


class SelfJudgeConfig(StrictConfig):
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


class RewardModelJudgeConfig(StrictConfig):
    """The `reward_model` judge: a transformers sequence-classification model."""

    path: str | None = Field(
        None, description="Model directory or hub id (required), resolved like model.path."
    )
    revision: str | None = Field(None, description="Hub revision of a hub id `path`.")
    # The values of model.dtype (selfplay.config.ModelDtype, which imports this module).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Precision of the reward model; auto: its checkpoint's own dtype on a GPU, "
        "float32 on a CPU (like model.dtype).",
    )
    batch_size: int = Field(32, ge=1, description="Responses scored per forward pass.")
    max_length: int = Field(1024, ge=8, description="Truncation length of prompt + response.")


class EnsembleConfig(StrictConfig):
    """The `ensemble` judge: members' scores z-normalised, then aggregated."""

    members: list[JudgeConfig] = Field(default_factory=list, description="The member judges.")
    aggregate: Literal["mean", "worst", "uncertainty"] = Field(
        "mean", description="mean R̄; worst-case min_i R_i; uncertainty-weighted R̄ − λ·Var_i R_i."
    )
    uncertainty_weight: float = Field(0.5, ge=0, description="λ of the uncertainty aggregate.")
    normalize: Literal["z", "none"] = Field(
        "z", description="Per-judge z-normalisation before aggregating."
    )


class JudgeConfig(StrictConfig):
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
        reason = unknown_judge(name)
        if reason is not None:
            raise ValueError(reason)
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
