"""The SGLang backend: an in-process `sglang.Engine` (GPU only), symmetric with `vllm`.

Prompts go in as the ids `selfplay.rendering` gives for the checkpoint's tokenizer and responses come back as ids decoded by that
tokenizer, as in the other backends; log-probs are SGLang's sampled-token log-probs. A new
checkpoint of the same shape is loaded in place (`update_weights_from_disk`), anything else
rebuilds the engine. SGLang does not install on a CPU-only machine; its OpenAI-compatible
server is usable from any machine through the `openai` backend.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from transformers import AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

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


def shape_signature(path: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """What must not change for weights to be reloaded in place: the model's config (minus
    bookkeeping keys) and the tokenizer's vocabulary and special tokens."""
    config = json.loads((Path(path) / "config.json").read_text())
    for key in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        config.pop(key, None)
    vocab = sorted(tokenizer.get_vocab().items())
    return json.dumps([config, vocab, tokenizer.all_special_tokens], sort_keys=True)


class SGLangBackend:
    """Generates with one `sglang.Engine` kept alive across rounds."""

    def __init__(
        self,
        engine: EngineConfig | None = None,
        dtype: ModelDtype = "auto",
        chat_template: str = "auto",
    ) -> None:
        self.engine_cfg = engine or EngineConfig()
        self.dtype = dtype  # model.dtype, resolved per checkpoint (selfplay.precision)
        self.chat_template = chat_template  # model.chat_template (selfplay.rendering)
        self.engine: Any = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.renderer: PromptRenderer | None = None
        self.checkpoint_dir: str | None = None
        self._signature: str | None = None
        self._stop_ids: set[int] = set()
        self.last_load: tuple[str, float] | None = None

    def load(self, checkpoint_dir: str) -> None:
        """Serve this checkpoint: update weights in place when only they changed, else rebuild."""
        sglang = import_engine("sglang", "sglang")
        path = resolve_dir(checkpoint_dir)
        if path == self.checkpoint_dir:
            return
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(path)
        signature = shape_signature(path, tokenizer)
        if self.engine is not None and signature == self._signature:
            result = self.engine.update_weights_from_disk(path)
            ok = result[0] if isinstance(result, tuple) else bool(result)
            if not ok:
                raise RuntimeError(f"sglang could not load the weights of {path}: {result}")
            self.engine.flush_cache()
            kind = "reload"
        else:
            self.close()
            self.engine = sglang.Engine(
                model_path=path,
                dtype=load_dtype(self.dtype, path, default_device()),
                random_seed=0,
                mem_fraction_static=self.engine_cfg.gpu_memory_utilization,
                disable_cuda_graph=self.engine_cfg.enforce_eager,
                context_length=self.engine_cfg.max_model_len,
                skip_tokenizer_init=True,
                tp_size=self.engine_cfg.tensor_parallel_size,
                max_running_requests=self.engine_cfg.max_num_seqs,
                disable_radix_cache=self.engine_cfg.enable_prefix_caching is False,
            )
            kind = "build"
        self.tokenizer, self.checkpoint_dir, self._signature = tokenizer, path, signature
        self._stop_ids = checkpoint_stop_ids(tokenizer, path)
        self.renderer = PromptRenderer(tokenizer, self.chat_template, path)
        self.last_load = (kind, time.perf_counter() - start)

    def close(self) -> None:
        """Shut the engine down (a later `load` builds a new one)."""
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
            self.checkpoint_dir = None

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Sample]]:
        """Return, per prompt, `params.n` samples (SGLang expands `n` itself)."""
        if self.engine is None or self.renderer is None:
            raise RuntimeError("SGLangBackend.generate called before load()")
        check_greedy(params)
        if not prompts:
            return []
        sampling = {
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens,
            "stop_token_ids": sorted(self._stop_ids),
        }
        encoded = self.renderer.ids_batch(prompts)
        outputs = self.engine.generate(
            input_ids=encoded,
            sampling_params=sampling,
            return_logprob=True,
        )
        # SGLang returns the n samples of each prompt one after another.
        samples = [self._sample(o) for o in outputs]
        n = params.n
        return [samples[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _sample(self, output: dict[str, Any]) -> Sample:
        assert self.tokenizer is not None
        ids = list(output["output_ids"])
        meta = output["meta_info"]
        logprob = sum(entry[0] for entry in meta.get("output_token_logprobs", []))
        reason = meta["finish_reason"]["type"]
        finish: Literal["stop", "length"] = "length" if reason == "length" else "stop"
        return Sample(
            text=self.tokenizer.decode(ids, skip_special_tokens=True),
            token_ids=ids,
            logprob=float(logprob),
            finish_reason=finish,
        )
