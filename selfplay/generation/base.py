"""The generation backend protocol and what every engine (hf, vllm, sglang, openai) shares."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from selfplay.tasks.base import Prompt


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

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Sample]]:
        """Return, per prompt, `params.n` samples. Deterministic for a fixed seed and batch.

        Each prompt is given to the policy as `selfplay.rendering.PromptRenderer` renders it
        for the loaded checkpoint (its chat template, or the plain text)."""
        ...

    def load(self, checkpoint_dir: str) -> None:
        """Load weights from a Hugging Face checkpoint directory (no-op if already loaded)."""
        ...

    def close(self) -> None:
        """Shut down what the backend runs besides this process (an engine core, a server)."""
        ...


def check_greedy(params: SamplingParams) -> None:
    """Raise ValueError for greedy decoding (temperature 0) asked for more than one sample."""
    if params.temperature == 0 and params.n != 1:
        raise ValueError("greedy decoding (temperature 0) needs n == 1")


def import_engine(module: str, *extras: str) -> Any:
    """Import an optional engine, or fail naming the extra(s) that install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        options = " or ".join(f"pip install 'selfplay[{extra}]'" for extra in extras)
        raise ImportError(
            f"generation backend needs the `{module}` package: {options} ({err})"
        ) from err


def resolve_dir(checkpoint_dir: str) -> str:
    """The absolute, symlink-free form of a checkpoint directory (the backends' cache key)."""
    return os.path.realpath(os.path.expanduser(str(checkpoint_dir)))


def stop_ids(
    tokenizer: PreTrainedTokenizerBase, generation_eos: int | list[int] | None, where: str
) -> set[int]:
    """The ids that end a response: the tokenizer's EOS and the model's generation EOS
    (`generation_config.eos_token_id`: an id, a list or None); ValueError naming `where` when
    there is none."""
    ids = {tokenizer.eos_token_id} - {None}
    if isinstance(generation_eos, list):
        ids |= set(generation_eos)
    elif generation_eos is not None:
        ids.add(generation_eos)
    if not ids:
        raise ValueError(f"{where}: no EOS token in tokenizer or model")
    return ids


def checkpoint_stop_ids(tokenizer: PreTrainedTokenizerBase, checkpoint_dir: str) -> set[int]:
    """`stop_ids` of a checkpoint directory, its generation EOS read from generation_config.json
    (none when the file is missing)."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(checkpoint_dir).eos_token_id
    except OSError:
        eos = None
    return stop_ids(tokenizer, eos, checkpoint_dir)
