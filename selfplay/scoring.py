"""Scoring responses under a checkpoint: log π(y | x), summed over the response's tokens.

What the train stage stores as reference and π_t log-probs and what the guard metrics compare
the new policy's samples against (the SFT model). The model is loaded in float32 on the
default device, once per `Scorer`, and freed with it.
"""

from __future__ import annotations

from selfplay.devices import default_device

SCORE_BATCH = 256


class Scorer:
    """A checkpoint loaded for scoring (its tokenizer and model in float32)."""

    def __init__(self, checkpoint_path: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint_path)
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint_path, dtype="float32")
        self.model.to(default_device())

    def score(self, prompts: list[str], responses: list[list[int]]) -> list[float]:
        """log π(response | prompt) for each (prompt text, response token ids) pair."""
        from selfplay.training.logprobs import score_responses

        prompt_ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        return score_responses(
            self.model, prompt_ids, responses, self.tokenizer.pad_token_id, batch_size=SCORE_BATCH
        )
