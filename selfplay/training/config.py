"""The `training` section: the loss (a name in selfplay.algorithms.LOSSES) and its
hyper-parameters, the optimizer, precision, LoRA and the ranks it runs on; read by
selfplay.training.trainer and selfplay.training.distributed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from selfplay.algorithms import LOSSES
from selfplay.config_base import StrictConfig, registered


class LoraConfig(StrictConfig):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling α.")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters.",
    )
    merge: bool = Field(
        False,
        description="Save each round's policy as a full model with the adapters merged, instead "
        "of the adapters alone (PEFT format, megabytes; the next round trains them on).",
    )


class DistributedConfig(StrictConfig):
    strategy: Literal["single", "ddp", "fsdp"] = Field(
        "single",
        description="single: in the stage's process on one device; ddp: DistributedDataParallel "
        "over nproc ranks (each holds the whole model); fsdp: FSDP2 (parameters, gradients and "
        "optimizer state sharded over the ranks).",
    )
    nproc: int = Field(
        1, ge=1, description="Ranks launched on this node (torch.distributed.run); one per GPU."
    )

    @model_validator(mode="after")
    def _single_is_one_rank(self) -> DistributedConfig:
        if self.strategy == "single" and self.nproc != 1:
            raise ValueError(
                "training.distributed.nproc must be 1 with strategy single (use ddp or fsdp)"
            )
        return self


class TrainingConfig(StrictConfig):
    loss: str = Field("dpo", description="Objective: a name in selfplay.algorithms.LOSSES.")
    beta: float = Field(0.1, gt=0, description="β of dpo/cdpo/rdpo/simpo/chipo/dpop/xpo, η of dno.")
    epsilon: float = Field(0.1, ge=0, description="cdpo/rdpo label-flip rate ε, < 0.5.")
    ipo_tau: float = Field(0.1, gt=0, description="IPO τ.")
    simpo_gamma_ratio: float = Field(0.5, ge=0, description="SimPO γ/β.")
    chipo_r: float | None = Field(
        None, gt=0, description="χPO clip R (margin clipped to [−2R, 2R]); required for chipo."
    )
    dpop_lambda: float = Field(
        50.0,
        ge=0,
        description="DPO-Positive λ: weight of the penalty max(0, S_ref(y_w) − S_θ(y_w)) "
        "inside dpop's margin (the paper's 50); 0 is dpo.",
    )
    inpo_eta: float = Field(0.005, gt=0, description="INPO η.")
    inpo_tau: float | None = Field(
        None,
        ge=0,
        description="INPO τ (KL weight), ≤ η; None: η/3 (LossParams). 0: the no-KL ablation.",
    )
    sppo_eta: float = Field(1000.0, gt=0, description="SPPO η (= 1/β).")
    xpo_alpha: float = Field(1e-5, ge=0, description="XPO exploration bonus α.")
    nll_weight: float = Field(0.0, ge=0, description="α of the NLL-on-chosen term.")
    reference: Literal["previous", "sft"] = Field(
        "previous",
        description="Reference policy: the round's starting policy or the SFT model; a loss "
        "that defines its own (LossSpec.reference) requires that one.",
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
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="The ranks training runs on."
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each decoder layer's activations in the backward (non-reentrant "
        "torch.utils.checkpoint) instead of keeping them: less memory, about a third more "
        "compute.",
    )
    max_tokens_per_micro_batch: int | None = Field(
        None,
        ge=1,
        description="Split each batch_size micro-batch into pieces of at most this many tokens "
        "(prompt + chosen + rejected of each pair; a longer pair is a piece alone), their "
        "gradients accumulated: the step is the same, its peak memory bounded. None: unsplit.",
    )
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

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, loss: str) -> str:
        return registered(loss, LOSSES, "loss")

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
        if self.bf16_weights and self.distributed.strategy != "single":
            raise ValueError(
                "training.bf16_weights needs training.distributed.strategy single "
                "(fsdp keeps bf16 compute copies of its own)"
            )
        fixed = LOSSES[self.loss].reference
        if fixed in ("previous", "sft") and self.reference != fixed:
            raise ValueError(
                f"training.reference must be '{fixed}' for loss {self.loss} "
                "(the algorithm defines its reference)"
            )
        return self
