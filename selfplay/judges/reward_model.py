"""The `reward_model` judge: a transformers sequence-classification model scores each response.

The score is the model's single logit for (prompt, response). With a chat template, the
conversation (the prompt's turns, or one user turn holding a plain prompt, then the response
as the assistant turn) is rendered by the reward model's own tokenizer once and encoded
without adding special tokens again, as `apply_chat_template(tokenize=True)` does: a template
that writes BOS itself (Llama-3) gets exactly one. Without a template, the prompt text followed
by the response text is encoded as the tokenizer encodes any text. Batches are padded on the
right with the pad id the model's config names, so the model reads each sequence's last token
and a score does not depend on the batch it was scored in.
"""

from __future__ import annotations

import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from selfplay.config import JudgeConfig
from selfplay.devices import default_device
from selfplay.judges.base import BaseJudge, JudgeEnv, JudgeItem, Verdict
from selfplay.model_source import resolve_model
from selfplay.precision import load_dtype


class RewardModelJudge(BaseJudge):
    """Scores responses with a reward model loaded once (CUDA when available) in
    `reward_model.dtype`; scores are float32 whatever it computes in."""

    name = "reward_model"

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        rm = cfg.reward_model
        self.batch_size, self.max_length = rm.batch_size, rm.max_length
        self.device = default_device()
        path = resolve_model(rm.path, rm.revision, "judge.reward_model.path")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = load_dtype(rm.dtype, path, self.device)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
        self.model.to(self.device)
        self.model.eval()
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"reward_model.path {rm.path}: expected a model with one output (num_labels=1), "
                f"found {self.model.config.num_labels}"
            )
        # The model finds a sequence's last token as the last one that is not its config's
        # pad id: the tokenizer must pad with that id (a Llama-3 tokenizer has no pad token of
        # its own while its reward model's config names one).
        pad_id = self.model.config.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        self.tokenizer.pad_token = self.tokenizer.convert_ids_to_tokens(pad_id)
        self.model.config.pad_token_id = pad_id
        self.tokenizer.padding_side = "right"
        self.templated = bool(getattr(self.tokenizer, "chat_template", None))

    def token_ids(self, item: JudgeItem) -> list[int]:
        """The ids the reward model scores for `item`, cut to `max_length` on the tokenizer's
        truncation side."""
        if self.templated:
            messages = item.prompt.chat() + [{"role": "assistant", "content": item.response}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(item.prompt.text + item.response)["input_ids"]
        if self.tokenizer.truncation_side == "left":
            return ids[-self.max_length :]
        return ids[: self.max_length]

    @torch.inference_mode()
    def _scores(self, batch: list[list[int]]) -> list[float]:
        enc = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(self.device)
        logits = self.model(**enc).logits[:, 0]
        return logits.float().cpu().tolist()

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """The reward model's logit for each response, in batches of `batch_size`."""
        verdicts: list[Verdict] = []
        for i in range(0, len(items), self.batch_size):
            batch = items[i : i + self.batch_size]
            start = time.perf_counter()
            try:
                scores = self._scores([self.token_ids(item) for item in batch])
            except Exception as err:  # recorded, never raised
                reason = f"reward model failed: {type(err).__name__}: {err}"
                verdicts += [Verdict.failure(reason) for _ in batch]
                continue
            latency = (time.perf_counter() - start) / len(batch)
            verdicts += [Verdict(status="ok", score=s, latency_s=latency) for s in scores]
        return verdicts
