"""Generation backends by name; `make_backend` builds the configured one."""

from __future__ import annotations

from collections.abc import Callable

from selfplay.config import GenerationConfig
from selfplay.devices import default_device
from selfplay.generation.base import GenerationBackend, Sample, SamplingParams
from selfplay.generation.hf import HFBackend

BACKENDS: dict[str, Callable[..., GenerationBackend]] = {"hf": HFBackend}

__all__ = ["BACKENDS", "GenerationBackend", "HFBackend", "Sample", "SamplingParams", "make_backend"]


def make_backend(cfg: GenerationConfig) -> GenerationBackend:
    """Build the backend named by `cfg.backend` (no checkpoint loaded yet)."""
    return BACKENDS[cfg.backend](prompts_per_batch=cfg.prompts_per_batch, device=default_device())
