"""Train a policy on one round's preference pairs with a loss chosen by name."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from torch import Tensor
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from selfplay.adapters import adapter_base, is_adapter
from selfplay.checkpoints import save_checkpoint
from selfplay.training.config import TrainingConfig
from selfplay.training.logprobs import (
    build_batch,
    build_prompt_groups,
    grouped_logprobs,
    sequence_logprobs,
    takes_custom_masks,
)
from selfplay.training.losses import LOSS_FNS, LossFn, LossParams, PairLogps, nll_term


@dataclass(frozen=True)
class PairExample:
    """One preference pair and the precomputed log-probs its loss needs.

    `ref_*` are S_ref of the loss's reference (0.0 for losses without one), `prev_*` S_t of the
    round's starting policy (INPO), `*_target` SPPO's win probabilities, `chosen_is_ref_sample`
    XPO's flag for which response came from the reference.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    ref_chosen_logp: float = 0.0
    ref_rejected_logp: float = 0.0
    prev_chosen_logp: float | None = None
    prev_rejected_logp: float | None = None
    chosen_target: float | None = None
    rejected_target: float | None = None
    chosen_is_ref_sample: bool | None = None


def loss_params(cfg: TrainingConfig) -> LossParams:
    """The loss hyper-parameters of a training config."""
    return LossParams(
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        ipo_tau=cfg.ipo_tau,
        simpo_gamma_ratio=cfg.simpo_gamma_ratio,
        chipo_r=cfg.chipo_r if cfg.chipo_r is not None else LossParams.chipo_r,
        dpop_lambda=cfg.dpop_lambda,
        inpo_eta=cfg.inpo_eta,
        inpo_tau=cfg.inpo_tau,
        sppo_eta=cfg.sppo_eta,
        xpo_alpha=cfg.xpo_alpha,
    )


def load_trainable(path: str, cfg: TrainingConfig, device: str) -> PreTrainedModel:
    """The policy to train, in float32 on `device`; its layers' activations recomputed in the
    backward when `cfg.gradient_checkpointing`; wrapped with LoRA adapters (peft) when
    `cfg.lora` is set, so only the adapters train; its layers compiled when `cfg.compile`.

    A policy that is a LoRA adapter (selfplay.adapters: the previous LoRA round's) is its base
    with those adapters, trained on with `cfg.lora`, merged into the base without.
    """
    from transformers import AutoModelForCausalLM

    adapter = is_adapter(path)
    model = AutoModelForCausalLM.from_pretrained(
        adapter_base(path) if adapter else path, dtype="float32"
    ).to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path, is_trainable=cfg.lora is not None)
        if cfg.lora is None:
            model = model.merge_and_unload()
    elif cfg.lora is not None:
        model = with_lora(model, cfg)
    if cfg.compile:
        compile_layers(model)
    return model


def compile_layers(model: PreTrainedModel) -> None:
    """torch.compile each decoder layer in place (parameter names and the saved checkpoint are
    unchanged); a model without a `layers` list in its decoder is compiled whole."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    for module in layers if isinstance(layers, torch.nn.ModuleList) else [decoder]:
        module.compile()


def with_lora(model: PreTrainedModel, cfg: TrainingConfig) -> PreTrainedModel:
    """`model` with `cfg.lora`'s adapters (peft), only they trainable."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RuntimeError("training.lora needs peft: pip install 'selfplay[lora]'") from None
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def save_trained(
    model: PreTrainedModel,
    cfg: TrainingConfig,
    tokenizer: PreTrainedTokenizerBase,
    target: Path,
    dtype: torch.dtype | None,
) -> None:
    """Save a round's trained `model` at `target` (atomically: save_checkpoint). With
    `cfg.lora` the adapters alone (PEFT format, in float32: megabytes; the backends load them
    onto their base), unless `cfg.lora.merge`; otherwise the full model (LoRA merged) in
    `dtype`."""
    if cfg.lora is not None and not cfg.lora.merge:
        save_checkpoint(model, tokenizer, target)
    else:
        save_checkpoint(merged_for_saving(model), tokenizer, target, dtype=dtype)


def merged_for_saving(model: PreTrainedModel) -> PreTrainedModel:
    """A plain model to save: LoRA adapters merged into the weights (each round's checkpoint is
    a full model the generation backends load as is); other models unchanged."""
    merge = getattr(model, "merge_and_unload", None)
    return merge() if merge is not None else model


def _batches(n: int, batch_size: int, epochs: int, seed: int) -> Iterator[list[int]]:
    """Indices of each batch: a fresh seeded permutation of range(n) per epoch."""
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order).tolist()
        for start in range(0, n, batch_size):
            yield perm[start : start + batch_size]


def _column(batch: list[PairExample], name: str, device: torch.device) -> Tensor | None:
    values = [getattr(p, name) for p in batch]
    if any(v is None for v in values):
        return None
    dtype = torch.bool if isinstance(values[0], bool) else torch.float32
    return torch.tensor(values, dtype=dtype, device=device)


def _policy_logps(
    model: PreTrainedModel, batch: list[PairExample], pad_id: int, shared: bool
) -> tuple[Tensor, Tensor]:
    """S_θ of the chosen [n] and rejected [n] responses, both in one forward.

    `shared`: one row per pair, its prompt computed once (PromptGroups); otherwise 2n rows.
    """
    device = next(model.parameters()).device
    if shared:
        groups = build_prompt_groups(
            [p.prompt_ids for p in batch],
            [[p.chosen_ids, p.rejected_ids] for p in batch],
            pad_id,
        )
        logps = grouped_logprobs(model, groups.to(device))
        return logps[:, 0], logps[:, 1]
    prompts = [p.prompt_ids for p in batch] * 2
    responses = [p.chosen_ids for p in batch] + [p.rejected_ids for p in batch]
    input_ids, attention_mask, response_mask = (
        x.to(device) for x in build_batch(prompts, responses, pad_id)
    )
    logps = sequence_logprobs(model, input_ids, attention_mask, response_mask)
    return logps[: len(batch)], logps[len(batch) :]


def _step(
    model: PreTrainedModel,
    batch: list[PairExample],
    loss_fn: LossFn,
    params: LossParams,
    nll_weight: float,
    pad_id: int,
    autocast: bool,
    shared: bool,
    denominator: int,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward of chosen and rejected together; the loss and (unsynced) metrics summed over
    `batch` and divided by `denominator` (the pairs of the micro-batch `batch` is part of, so the
    parts' values add up to the micro-batch's means)."""
    device = next(model.parameters()).device
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else nullcontext()
    with ctx:
        chosen, rejected = _policy_logps(model, batch, pad_id, shared)
    lengths = torch.tensor(
        [[len(p.chosen_ids), len(p.rejected_ids)] for p in batch], dtype=torch.long, device=device
    )
    b = PairLogps(
        policy_chosen=chosen.float(),
        policy_rejected=rejected.float(),
        ref_chosen=_column(batch, "ref_chosen_logp", device),
        ref_rejected=_column(batch, "ref_rejected_logp", device),
        chosen_len=lengths[:, 0],
        rejected_len=lengths[:, 1],
        prev_chosen=_column(batch, "prev_chosen_logp", device),
        prev_rejected=_column(batch, "prev_rejected_logp", device),
        chosen_target=_column(batch, "chosen_target", device),
        rejected_target=_column(batch, "rejected_target", device),
        chosen_is_ref_sample=_column(batch, "chosen_is_ref_sample", device),
    )
    out = loss_fn(b, params)
    # sum / n is bitwise what mean() computes, so an unsplit batch's numbers are the same.
    loss = out.losses.sum() / denominator + nll_weight * nll_term(b).sum() / denominator
    metrics = {
        "loss": loss.detach(),
        "reward_margin": (out.chosen_rewards - out.rejected_rewards).sum() / denominator,
        "preference_accuracy": (out.chosen_rewards > out.rejected_rewards).float().sum()
        / denominator,
        "chosen_logp": b.policy_chosen.detach().sum() / denominator,
        "rejected_logp": b.policy_rejected.detach().sum() / denominator,
    }
    return loss, metrics


class _MasterWeights:
    """bf16 weights for the forward and backward, float32 master copies for the optimizer.

    On entry every float32 parameter of the model becomes bf16 in place (buffers such as the
    rotary frequencies stay float32) and its float32 value is kept here: the trainable ones'
    on their device, the frozen ones' (a LoRA base model) in CPU memory. `collect` moves the
    bf16 gradients of the trainable parameters into their masters' float32 `.grad` (after
    each micro-batch, so accumulation is in float32), the optimizer steps the masters, and
    `publish` copies them back into the bf16 weights. `restore` puts the float32 masters back
    into the model: the frozen parameters exactly as they were, the trained ones as trained.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.params = [p for p in model.parameters() if p.dtype == torch.float32]
        self.masters = [
            p.detach().clone() if p.requires_grad else p.detach().to("cpu", copy=True)
            for p in self.params
        ]
        for p in self.params:
            p.data = p.data.to(torch.bfloat16)
        pairs = zip(self.params, self.masters, strict=True)
        self.trained = [(p, m) for p, m in pairs if p.requires_grad]

    @property
    def trainable(self) -> list[Tensor]:
        """The float32 masters of the trainable parameters (what the optimizer steps)."""
        return [m for _, m in self.trained]

    def collect(self) -> None:
        """Add the bf16 gradients into the masters' float32 gradients and drop them."""
        for p, m in self.trained:
            if p.grad is None:
                continue
            if m.grad is None:
                m.grad = p.grad.float()
            else:
                m.grad.add_(p.grad)
            p.grad = None

    def publish(self) -> None:
        """Copy the masters into the bf16 weights."""
        torch._foreach_copy_([p.data for p, _ in self.trained], self.trainable)

    def restore(self) -> None:
        """Make the model float32 again, holding the masters' values."""
        for p, m in zip(self.params, self.masters, strict=True):
            p.data, m.grad = m.to(p.device), None


def _pieces(batch: list[PairExample], budget: int | None) -> list[list[PairExample]]:
    """`batch` cut in order into pieces of at most `budget` tokens (a pair's prompt, chosen and
    rejected ids; a longer pair is a piece alone); one piece when `budget` is None, none for no
    pairs."""
    if budget is None:
        return [batch] if batch else []
    pieces: list[list[PairExample]] = []
    tokens = 0
    for pair in batch:
        n = len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)
        if not pieces or tokens + n > budget:
            pieces.append([])
            tokens = 0
        pieces[-1].append(pair)
        tokens += n
    return pieces


def _most_over_ranks(n: int, world: int, device: torch.device) -> int:
    """The largest `n` of the `world` data-parallel ranks (`n` itself on one)."""
    if world == 1:
        return n
    most = torch.tensor([n], device=device)
    torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
    return int(most)


def _optimizer(params: list[Tensor], cfg: TrainingConfig) -> torch.optim.Optimizer:
    # foreach/fused: a few kernels for the whole update instead of ~10 per parameter tensor
    # (torch defaults to the per-tensor loop on CPU).
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    fused = all(p.is_cuda or p.device.type == "cpu" for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def _lr_lambda(cfg: TrainingConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warmup over cfg.warmup_steps, then constant or cosine decay to 0 at total_steps."""

    def factor(i: int) -> float:
        if i < cfg.warmup_steps:
            return (i + 1) / (cfg.warmup_steps + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (i - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def planned_steps(n_pairs: int, cfg: TrainingConfig) -> int:
    """Optimizer steps train_on_pairs will take for n_pairs."""
    micro = cfg.epochs * -(-n_pairs // cfg.batch_size)
    return min(cfg.max_steps, -(-micro // cfg.grad_accum_steps))


def train_on_pairs(
    model: PreTrainedModel,
    pairs: list[PairExample],
    cfg: TrainingConfig,
    pad_id: int,
    seed: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict[str, float]:
    """Optimise `model` in place on `pairs`; return each step metric's mean over the steps.

    Shuffles with `seed`, `cfg.epochs` passes of micro-batches of `cfg.batch_size` pairs (the
    last of an epoch may be smaller), `cfg.grad_accum_steps` micro-batches per optimizer step,
    at most `cfg.max_steps` optimizer steps; `cfg.max_tokens_per_micro_batch` splits each
    micro-batch into pieces whose gradients accumulate to the unsplit one's. Gradients are
    clipped to `cfg.grad_clip`; the learning rate warms up linearly, then stays constant or
    follows a cosine. On a GPU with `cfg.bf16` the forward runs under bf16 autocast, or with
    `cfg.bf16_weights` on bf16 weights whose float32 masters the optimizer steps (the model is
    float32 again on return); the loss is reduced in float32 either way.
    `on_step(step, metrics)` is called after each optimizer step, step counting from 1; metrics
    are loss, reward_margin, preference_accuracy, chosen_logp, rejected_logp (means over the
    step's micro-batches), grad_norm (before clipping) and lr. The summary adds "steps".
    Deterministic for a given seed on CPU. Leaves the model in eval mode; no pairs: returns {}
    without touching the model.
    Data-parallel (`world` ranks, `model` wrapped by selfplay.training.distributed, the process
    group up): every rank is given the same pairs and seed, rank `rank` computes the slice
    `[rank::world]` of each micro-batch, and the metrics are summed over the ranks, so each step's
    loss, metrics and gradient are those of one rank on the whole micro-batch.
    """
    if not pairs:
        return {}
    if isinstance(model, FSDPModule):
        precision = "float32"  # its MixedPrecisionPolicy casts (selfplay.training.distributed)
    else:
        precision = _precision(cfg, next(model.parameters()).device)
    masters = _MasterWeights(model) if precision == "bf16_weights" else None
    try:
        return _train(
            model,
            pairs,
            cfg,
            pad_id,
            seed,
            on_step,
            precision == "autocast",
            masters,
            rank,
            world,
        )
    finally:
        if masters is not None:
            masters.restore()


def _precision(cfg: TrainingConfig, device: torch.device) -> str:
    """How a step computes: "float32" (CPU, or bf16 off), "autocast" (bf16 autocast over
    float32 weights) or "bf16_weights" (bf16 weights, float32 masters: _MasterWeights)."""
    if not cfg.bf16 or device.type != "cuda":
        return "float32"
    return "bf16_weights" if cfg.bf16_weights else "autocast"


def _train(
    model: PreTrainedModel,
    pairs: list[PairExample],
    cfg: TrainingConfig,
    pad_id: int,
    seed: int,
    on_step: Callable[[int, dict[str, float]], None] | None,
    autocast: bool,
    masters: _MasterWeights | None,
    rank: int,
    world: int,
) -> dict[str, float]:
    loss_fn = LOSS_FNS[cfg.loss]
    params = loss_params(cfg)
    if masters is not None:
        trainable = masters.trainable
    else:
        trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(trainable, cfg)
    total = planned_steps(len(pairs), cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total))
    device = next(model.parameters()).device
    shared = cfg.shared_prompt
    if shared is None:
        shared = device.type != "cuda"
    shared = shared and takes_custom_masks(model)
    accum = cfg.grad_accum_steps
    totals: dict[str, float] = {}
    step = 0
    # Seed dropout without disturbing the caller's global RNG streams.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        try:
            micro = _batches(len(pairs), cfg.batch_size, cfg.epochs, seed)
            for step in range(1, total + 1):
                # planned_steps counts the micro-batches, so no group is ever empty.
                group = list(islice(micro, accum))
                optimizer.zero_grad(set_to_none=True)
                sums: dict[str, Tensor] = {}
                for indices in group:
                    mine = [pairs[i] for i in indices[rank::world]]
                    pieces = _pieces(mine, cfg.max_tokens_per_micro_batch)
                    # Every rank runs as many forwards, so their collectives pair up: a rank
                    # with fewer pieces repeats the micro-batch's first pair with weight 0.
                    for j in range(_most_over_ranks(len(pieces), world, device)):
                        weight = 1.0 if j < len(pieces) else 0.0
                        piece = pieces[j] if j < len(pieces) else [pairs[indices[0]]]
                        loss, metrics = _step(
                            model,
                            piece,
                            loss_fn,
                            params,
                            cfg.nll_weight,
                            pad_id,
                            autocast,
                            shared,
                            denominator=len(indices),
                        )
                        # Data parallelism averages the ranks' gradients: × world makes the sum.
                        (loss * (world * weight) / len(group)).backward()
                        if masters is not None:
                            masters.collect()
                        for k, v in metrics.items():
                            sums[k] = sums.get(k, 0.0) + v * weight / len(group)
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                if isinstance(grad_norm, DTensor):
                    grad_norm = grad_norm.full_tensor()
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                if masters is not None:
                    masters.publish()
                schedule.step()
                # One device sync per step for all the metrics.
                summed = torch.stack(list(sums.values()))
                if world > 1:
                    torch.distributed.all_reduce(summed)
                values = torch.cat([summed, grad_norm.float().reshape(1)]).tolist()
                metrics = dict(zip([*sums, "grad_norm"], values, strict=True))
                metrics["lr"] = lr
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v
                if on_step is not None:
                    on_step(step, metrics)
        finally:
            model.eval()
    summary = {k: v / max(step, 1) for k, v in totals.items()}
    summary["steps"] = float(step)
    return summary
