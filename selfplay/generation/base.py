"""The generation backend protocol shared by every engine (hf now; vLLM, SGLang, OpenAI later)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class Sample:
    """One generated response.

    `token_ids` are the response tokens exactly as sampled, EOS included when
    `finish_reason == "stop"`; `logprob` is their summed log-probability under the
    generating policy (raw logits, temperature 1), the S_t(y) of ALGORITHMS.md.
    """

    text: str
    token_ids: list[int]
    logprob: float
    finish_reason: Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: `n` responses per prompt; temperature 0 means greedy (then n must be 1)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8
    seed: int = 0


class GenerationBackend(Protocol):
    """Generates responses from one loaded checkpoint."""

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Sample]]:
        """Return, per prompt, `params.n` samples. Deterministic for a fixed seed and batch."""
        ...

    def load(self, checkpoint_dir: str) -> None:
        """Load weights from a Hugging Face checkpoint directory (no-op if already loaded)."""
        ...

    def close(self) -> None:
        """Shut down what the backend runs besides this process (an engine core, a server)."""
        ...
