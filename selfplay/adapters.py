"""LoRA adapter checkpoints (PEFT format: adapter_config.json and adapter_model.safetensors,
megabytes), what a LoRA round saves unless `training.lora.merge`: how to tell one and which
base model its adapters apply to. transformers' `AutoModelForCausalLM.from_pretrained` loads
one as its base with the adapters in place."""

from __future__ import annotations

import json
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(path: str | Path) -> bool:
    """Whether the checkpoint at `path` is a LoRA adapter rather than a full model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model (a path or hub id) the adapter at `path` was trained on."""
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


def adapter_rank(path: str | Path) -> int:
    """The adapter's LoRA rank r."""
    return int(json.loads((Path(path) / ADAPTER_CONFIG).read_text())["r"])
