"""Scoring responses under a checkpoint: log π(y | x), summed over the response's tokens.

What the train stage stores as reference and π_t log-probs and what the guard metrics compare
the new policy's samples against (the SFT model). Prompts are rendered by
`selfplay.rendering` as generation renders them, so a response is scored after the very tokens
it was sampled after. The model is loaded on the default device in
`model.dtype` (selfplay.precision), once per `Scorer`, and freed with it.
Batches are bounded by SCORE_TOKENS_PER_BATCH tokens, not a count of responses, so long
responses do not run out of memory.
"""

from __future__ import annotations

from selfplay.config import ModelDtype
from selfplay.devices import default_device
from selfplay.precision import load_dtype
from selfplay.rendering import PromptRenderer, padding_id
from selfplay.tasks.base import Prompt

SCORE_TOKENS_PER_BATCH = 65536
"""Padded tokens (prompt + responses) per scoring forward: 256 responses of 256 tokens."""


class Scorer:
    """A checkpoint loaded for scoring (its tokenizer and prompt renderer under
    `chat_template`, and its model in `dtype` resolved for the default device)."""

    def __init__(
        self, checkpoint_path: str, dtype: ModelDtype = "auto", chat_template: str = "auto"
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint_path)
        self.renderer = PromptRenderer(self.tokenizer, chat_template, str(checkpoint_path))
        device = default_device()
        self.model = AutoModelForCausalLM.from_pretrained(
            checkpoint_path, dtype=load_dtype(dtype, checkpoint_path, device)
        )
        self.model.to(device)

    def score(self, prompts: list[Prompt], responses: list[list[int]]) -> list[float]:
        """log π(response | prompt) for each (prompt, response token ids) pair."""
        from selfplay.training.logprobs import score_responses

        return score_responses(
            self.model,
            self.renderer.ids_batch(prompts),
            responses,
            padding_id(self.tokenizer),
            max_tokens_per_batch=SCORE_TOKENS_PER_BATCH,
        )
