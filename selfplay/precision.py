"""The policy's precision (`model.dtype`) resolved for a checkpoint and a device.

`auto` loads a checkpoint in its own dtype (config.json's `dtype`, `torch_dtype` before
transformers 5; a LoRA adapter's base's) on a GPU and in float32 on a CPU, where half precision
is slow and inexact; checkpoints are saved in the configured dtype, or with `auto` in the
round's policy's own, whatever the trainer computed in (it keeps float32 masters).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from selfplay.adapters import adapter_base, is_adapter
from selfplay.config import ModelDtype

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def checkpoint_dtype(checkpoint_dir: str | Path) -> str:
    """The dtype a checkpoint's config.json names ("float32" when it names none, or one that
    is not a floating dtype selfplay runs); a LoRA adapter's (no config.json) is its base's,
    which its adapters are loaded onto."""
    if is_adapter(checkpoint_dir):
        return checkpoint_dtype(adapter_base(checkpoint_dir))
    try:
        config = json.loads((Path(checkpoint_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return name if name in TORCH_DTYPES else "float32"


def load_dtype(dtype: ModelDtype, checkpoint_dir: str | Path, device: str) -> str:
    """The dtype to load `checkpoint_dir` in on `device` ("cuda", "cpu", …) for `dtype`."""
    if dtype != "auto":
        return dtype
    return checkpoint_dtype(checkpoint_dir) if device.startswith("cuda") else "float32"


def save_dtype(dtype: ModelDtype, policy_dir: str | Path) -> torch.dtype:
    """The dtype a round's checkpoint is saved in: `dtype`, or with auto that of the policy
    it was trained from (`policy_dir`)."""
    return TORCH_DTYPES[checkpoint_dtype(policy_dir) if dtype == "auto" else dtype]
