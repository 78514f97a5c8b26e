"""Supervised warm-start of the tiny policy, cached on disk by content hash.

Prompts are rendered by `selfplay.rendering` under `model.chat_template`, as the loop renders
them: the tiny model has no chat template, so it reads the plain text unless a template file
is configured."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from selfplay.config import ConfigError, ModelConfig, SFTConfig
from selfplay.devices import default_device
from selfplay.generation.base import SamplingParams
from selfplay.generation.hf import HFBackend
from selfplay.model_source import resolve_model
from selfplay.rendering import PromptRenderer, padding_id
from selfplay.tasks.base import Prompt, Task
from selfplay.tiny_model import build_model, build_tokenizer

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]
"""Called after each optimizer step with (step, total_steps, loss)."""

# The loop numbers its rounds from 0; SFT data and the early-stopping validation prompts are
# the task's draws for these round indices. For arithmetic they come from the same train pool
# as the loop's rounds (never from the held-out set).
SFT_ROUND = -1
VALIDATION_ROUND = -2
VALIDATION_SIZE = 256
VALIDATE_EVERY = 50
# Bump when SFT or the tiny model changes in a way that invalidates cached policies.
CACHE_FORMAT = 1
WARMUP_FRACTION = 0.05
MIN_LR_FRACTION = 0.1
ADAM_BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.01
IGNORE_INDEX = -100


def _lr_factor(step: int, total: int) -> float:
    """Linear warmup, then cosine decay to MIN_LR_FRACTION of the peak."""
    warmup = max(1, int(total * WARMUP_FRACTION))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


def _encode(
    renderer: PromptRenderer, examples: list[tuple[Prompt, str]]
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + EOS) per example; prompts rendered as generation does."""
    tokenizer = renderer.tokenizer
    prompts = renderer.ids_batch([p for p, _ in examples])
    completions = tokenizer([c for _, c in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(p, c + [eos]) for p, c in zip(prompts, completions, strict=True)]


def _collate(
    batch: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels), each (batch, max_len); labels mask prompts."""
    width = max(len(p) + len(c) for p, c in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (p, c) in enumerate(batch):
        n = len(p) + len(c)
        ids[row, :n] = torch.tensor(p + c)
        labels[row, len(p) : n] = torch.tensor(c)
        mask[row, :n] = 1
    return ids, mask, labels


@dataclass(frozen=True)
class SFTResult:
    """What a supervised run did: optimizer steps taken and the last batch's loss."""

    steps: int
    loss: float


def sft_train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[tuple[Prompt, str]],
    cfg: SFTConfig,
    seed: int,
    progress: Progress | None = None,
    stop: Callable[[int], bool] | None = None,
    chat_template: str = "auto",
) -> SFTResult:
    """Train on (prompt, completion) pairs with completion-only loss.

    The loss covers the completion tokens and the EOS appended to them, never the prompt.
    Up to `cfg.steps` AdamW steps of `cfg.batch_size` examples, epochs reshuffled with `seed`;
    warmup then cosine learning-rate decay over `cfg.steps`. `stop(step)` is asked after each
    step and ends training early when it returns True. Prompts are rendered under
    `chat_template` (model.chat_template). Leaves the model in eval mode.
    """
    if not examples:
        raise ValueError("sft_train needs at least one example")
    encoded = _encode(PromptRenderer(tokenizer, chat_template), examples)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=ADAM_BETAS, weight_decay=WEIGHT_DECAY
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, cfg.steps)
    )
    model.train()
    order = torch.randperm(len(encoded), generator=gen).tolist()
    cursor, loss_value, steps_done = 0, float("nan"), 0
    for step in range(cfg.steps):
        batch = []
        while len(batch) < cfg.batch_size:
            if cursor == len(order):
                order, cursor = torch.randperm(len(encoded), generator=gen).tolist(), 0
            batch.append(encoded[order[cursor]])
            cursor += 1
        device = next(model.parameters()).device
        ids, mask, labels = (x.to(device) for x in _collate(batch, padding_id(tokenizer)))
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_value, steps_done = float(loss.detach()), step + 1
        if progress is not None:
            progress(steps_done, cfg.steps, loss_value)
        if stop is not None and stop(steps_done):
            break
    model.eval()
    return SFTResult(steps=steps_done, loss=loss_value)


def sft_examples(task: Task, cfg: SFTConfig) -> list[tuple[Prompt, str]]:
    """(prompt, reference response) for the task's SFT draw: one example per training sequence."""
    prompts = task.train_prompts(SFT_ROUND, cfg.steps * cfg.batch_size)
    examples = []
    for prompt in prompts:
        response = task.reference_response(prompt)
        if response is not None:
            examples.append((prompt, response))
    return examples


def check_sft_data(model_cfg: ModelConfig, task: Task) -> None:
    """Raise ConfigError (naming model.sft.steps) when the tiny model is to be SFT-trained but
    the task's SFT draw has no prompt with a reference answer: checked before anything is
    written, and again by prepare_policy on the examples it trains on."""
    if not model_cfg.path:
        _require_sft_data(model_cfg, sft_examples(task, model_cfg.sft))


def _require_sft_data(model_cfg: ModelConfig, examples: list[tuple[Prompt, str]]) -> None:
    if model_cfg.sft.steps > 0 and not examples:
        raise ConfigError(
            "model.sft.steps: the tiny model needs SFT data, but the task has no prompts with "
            "reference answers (set model.path to a trained model, or model.sft.steps to 0)"
        )


class _AccuracyStop:
    """Every VALIDATE_EVERY steps, greedy accuracy on a validation draw; stop at the target."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        target: float,
        chat_template: str,
    ) -> None:
        self.model, self.task, self.target = model, task, target
        self.prompts = [
            p
            for p in task.train_prompts(VALIDATION_ROUND, VALIDATION_SIZE)
            if task.reference_response(p) is not None
        ]
        longest = max(
            (len(tokenizer(task.reference_response(p) or "")["input_ids"]) for p in self.prompts),
            default=0,
        )
        self.params = SamplingParams(n=1, temperature=0.0, max_new_tokens=longest + 1)
        device = str(next(model.parameters()).device)
        self.backend = HFBackend(device=device, chat_template=chat_template)
        self.backend.attach(model, tokenizer)
        self.accuracy: float | None = None

    def __call__(self, step: int) -> bool:
        if not self.prompts or step % VALIDATE_EVERY:
            return False
        self.model.eval()
        outputs = self.backend.generate(self.prompts, self.params)
        self.model.train()
        correct = sum(
            self.task.verify(p, o[0].text)[0] for p, o in zip(self.prompts, outputs, strict=True)
        )
        self.accuracy = correct / len(self.prompts)
        logger.debug("SFT step %d: validation accuracy %.3f", step, self.accuracy)
        return self.accuracy >= self.target


def _cache_key(model_cfg: ModelConfig, seed: int, examples: list[tuple[Prompt, str]]) -> str:
    data = hashlib.sha256()
    for prompt, response in examples:
        shown = prompt.text if prompt.messages is None else prompt.stored_messages()
        data.update(json.dumps([shown, response]).encode())
    spec = {
        "format": CACHE_FORMAT,
        "tiny": model_cfg.tiny.model_dump(mode="json"),
        "sft": model_cfg.sft.model_dump(mode="json"),
        "seed": seed,
        "examples": data.hexdigest(),
    }
    # Only a template file changes what the tiny model (which has no template) is trained on;
    # without one the key is what it was before model.chat_template existed.
    if model_cfg.chat_template not in ("auto", "none"):
        spec["chat_template"] = Path(model_cfg.chat_template).expanduser().read_text()
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def prepare_policy(
    model_cfg: ModelConfig, task: Task, seed: int, progress: Progress | None = None
) -> Path:
    """The initial policy's checkpoint directory, building and SFT-training the tiny model if needed.

    With `model_cfg.path` set, its directory (a hub id's cached snapshot) is returned untouched.
    Otherwise the tiny model is trained on the task's reference responses and cached under
    `cache_dir/tiny-<hash of tiny config, SFT config, seed and the SFT examples>`; an existing
    cache entry is reused without training. The entry is written to a temporary directory and
    renamed into place, so an interrupted build never leaves a partial checkpoint behind.
    Raises ConfigError when SFT is asked for but the task has no reference responses (as
    check_sft_data does).
    """
    if model_cfg.path:
        return resolve_model(model_cfg.path, model_cfg.revision, "model.path")
    examples = sft_examples(task, model_cfg.sft)
    _require_sft_data(model_cfg, examples)
    cache_root = Path(model_cfg.cache_dir).expanduser()
    final = cache_root / f"tiny-{_cache_key(model_cfg, seed, examples)}"
    if final.is_dir():
        logger.info("reusing cached tiny policy %s", final)
        return final

    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache_root / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tokenizer = build_tokenizer()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(model_cfg.tiny, tokenizer).to(default_device())
        logger.info(
            "training tiny policy: %d parameters, %d SFT steps",
            model.num_parameters(),
            model_cfg.sft.steps,
        )
        start = time.perf_counter()
        result, stop = SFTResult(steps=0, loss=float("nan")), None
        if model_cfg.sft.steps > 0:
            if model_cfg.sft.target_accuracy is not None:
                target = model_cfg.sft.target_accuracy
                stop = _AccuracyStop(model, tokenizer, task, target, model_cfg.chat_template)
            result = sft_train(
                model,
                tokenizer,
                examples,
                model_cfg.sft,
                seed,
                progress,
                stop,
                model_cfg.chat_template,
            )
        seconds = time.perf_counter() - start
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "seconds": round(seconds, 2),
            "steps": result.steps,
            "final_loss": result.loss,
            "validation_accuracy": stop.accuracy if stop is not None else None,
        }
        (tmp / "selfplay_sft.json").write_text(json.dumps(info, indent=2) + "\n")
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # not a concurrent build that finished first
                raise
        logger.info(
            "tiny policy trained in %.1fs, %d steps (loss %.4f): %s",
            seconds,
            result.steps,
            result.loss,
            final,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
