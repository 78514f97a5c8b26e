"""Generation backends by name; `make_backend` builds the configured one.

The engines behind `vllm`, `sglang` and `openai` are optional extras, imported only when that
backend is built.
"""

from __future__ import annotations

from collections.abc import Callable

from selfplay.config import GenerationConfig, ModelDtype
from selfplay.devices import default_device
from selfplay.generation.base import GenerationBackend, Sample, SamplingParams
from selfplay.generation.hf import HFBackend


def _hf(cfg: GenerationConfig, dtype: ModelDtype, chat_template: str) -> GenerationBackend:
    return HFBackend(cfg.prompts_per_batch, default_device(), dtype, chat_template)


def _vllm(cfg: GenerationConfig, dtype: ModelDtype, chat_template: str) -> GenerationBackend:
    from selfplay.generation.vllm import VLLMBackend

    return VLLMBackend(cfg.engine, dtype, chat_template)


def _sglang(cfg: GenerationConfig, dtype: ModelDtype, chat_template: str) -> GenerationBackend:
    from selfplay.generation.sglang import SGLangBackend

    return SGLangBackend(cfg.engine, dtype, chat_template)


def _openai(cfg: GenerationConfig, dtype: ModelDtype, chat_template: str) -> GenerationBackend:
    from selfplay.generation.openai_backend import OpenAIBackend

    return OpenAIBackend(cfg.openai, dtype, chat_template)


BACKENDS: dict[str, Callable[[GenerationConfig, ModelDtype, str], GenerationBackend]] = {
    "hf": _hf,
    "vllm": _vllm,
    "sglang": _sglang,
    "openai": _openai,
}

__all__ = ["BACKENDS", "GenerationBackend", "HFBackend", "Sample", "SamplingParams", "make_backend"]


def make_backend(
    cfg: GenerationConfig, dtype: ModelDtype = "auto", chat_template: str = "auto"
) -> GenerationBackend:
    """Build the backend named by `cfg.backend`, loading checkpoints in `dtype` (model.dtype)
    and rendering prompts under `chat_template` (model.chat_template); no checkpoint loaded
    yet."""
    return BACKENDS[cfg.backend](cfg, dtype, chat_template)
