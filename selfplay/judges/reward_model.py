"""The `reward_model` judge: a transformers sequence-classification model scores each response.

The score is the model's single logit for (prompt, response): rendered with the tokenizer's chat
template when it has one (user turn, assistant turn), else the prompt text followed by the
response text. Batches are padded; the model reads the last non-pad token, so left and right
padding give the same scores.
"""

from __future__ import annotations

import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from selfplay.config import JudgeConfig
from selfplay.devices import default_device
from selfplay.judges.base import BaseJudge, JudgeEnv, JudgeItem, Verdict


class RewardModelJudge(BaseJudge):
    """Scores responses with a reward model loaded once (CUDA when available)."""

    name = "reward_model"

    def __init__(self, cfg: JudgeConfig, env: JudgeEnv) -> None:
        rm = cfg.reward_model
        self.batch_size, self.max_length = rm.batch_size, rm.max_length
        self.device = default_device()
        self.tokenizer = AutoTokenizer.from_pretrained(rm.path)
        self.model = AutoModelForSequenceClassification.from_pretrained(rm.path).to(self.device)
        self.model.eval()
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"reward_model.path {rm.path}: expected a model with one output (num_labels=1), "
                f"found {self.model.config.num_labels}"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def _text(self, item: JudgeItem) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [
                {"role": "user", "content": item.prompt.text},
                {"role": "assistant", "content": item.response},
            ]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return item.prompt.text + item.response

    @torch.inference_mode()
    def _scores(self, texts: list[str]) -> list[float]:
        enc = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
        ).to(self.device)
        logits = self.model(**enc).logits[:, 0]
        return logits.float().cpu().tolist()

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """The reward model's logit for each response, in batches of `batch_size`."""
        verdicts: list[Verdict] = []
        for i in range(0, len(items), self.batch_size):
            batch = items[i : i + self.batch_size]
            start = time.perf_counter()
            try:
                scores = self._scores([self._text(item) for item in batch])
            except Exception as err:  # recorded, never raised
                reason = f"reward model failed: {type(err).__name__}: {err}"
                verdicts += [Verdict.failure(reason) for _ in batch]
                continue
            latency = (time.perf_counter() - start) / len(batch)
            verdicts += [Verdict(status="ok", score=s, latency_s=latency) for s in scores]
        return verdicts
