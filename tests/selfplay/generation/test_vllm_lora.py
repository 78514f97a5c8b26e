"""The vllm backend serves LoRA adapter checkpoints (a LoRA round's) on one engine over their
base: each new adapter a LoRARequest, no rebuild, the same greedy tokens as transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfplay.config import EngineConfig
from selfplay.generation import SamplingParams
from selfplay.generation.vllm import VLLMBackend
from selfplay.tasks.base import Prompt

pytestmark = pytest.mark.heavy

PROMPTS = [Prompt(t) for t in ("Q:1+2=", "Q:66+24=", "Q:5-3=")]
GREEDY = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)


def save_adapter(base: Path, target: Path, seed: int) -> None:
    """Random adapters on q and v (B ≠ 0, so they change the policy), as peft saves them."""
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 4.0)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)


def hf_greedy(checkpoint: Path) -> list[list[int]]:
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)  # the adapters on their base
    out = []
    for prompt in PROMPTS:
        ids = torch.tensor([tok(prompt.text)["input_ids"]])
        new = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
        out.append(new.tolist())
    return out


def test_adapters_are_served_on_one_engine_over_their_base(engine_checkpoint, tmp_path: Path):
    save_adapter(engine_checkpoint, tmp_path / "round-0", seed=0)
    save_adapter(engine_checkpoint, tmp_path / "round-1", seed=1)
    backend = VLLMBackend(EngineConfig(gpu_memory_utilization=0.05, enforce_eager=True))
    try:
        backend.load(str(tmp_path / "round-0"))
        engine = backend.llm
        first = [s[0].token_ids for s in backend.generate(PROMPTS, GREEDY)]
        backend.load(str(tmp_path / "round-1"))
        assert backend.llm is engine  # a new adapter, not a new engine
        second = [s[0].token_ids for s in backend.generate(PROMPTS, GREEDY)]
        backend.load(str(engine_checkpoint))  # the base (e.g. evaluated against): no rebuild
        assert backend.llm is engine
        plain = [s[0].token_ids for s in backend.generate(PROMPTS, GREEDY)]
    finally:
        backend.close()

    def cut(tokens: list[list[int]]) -> list[list[int]]:  # both stop at EOS (2)
        return [t[: t.index(2) + 1] if 2 in t else t for t in tokens]

    assert cut(first) == cut(hf_greedy(tmp_path / "round-0"))
    assert cut(second) == cut(hf_greedy(tmp_path / "round-1"))
    assert cut(plain) == cut(hf_greedy(engine_checkpoint))
    # the adapters change the policy, each its own way
    assert len({str(cut(first)), str(cut(second)), str(cut(plain))}) == 3
