"""Where models run: the GPU when torch sees one, else the CPU."""

from __future__ import annotations

import torch


def default_device() -> str:
    """ "cuda" when a GPU is visible to torch, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"
