"""The transformers backend: batched sampling on CPU (or one GPU) with a hand-written decode loop.

The loop does what `model.generate` does for plain sampling, minus its per-step machinery
(logits processors, stopping criteria, output bookkeeping), which dominates the cost of
generating from a tiny model. Sampling draws from a private `torch.Generator`, so a call
never touches torch's global RNG and the same call with the same seed returns the same samples.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from selfplay.config import ModelDtype
from selfplay.generation.base import (
    Sample,
    SamplingParams,
    check_greedy,
    resolve_dir,
    stop_ids,
)
from selfplay.precision import load_dtype
from selfplay.rendering import PromptRenderer, padding_id
from selfplay.tasks.base import Prompt


class HFBackend:
    """Generates with a transformers causal LM kept loaded between calls."""

    def __init__(
        self,
        prompts_per_batch: int = 256,
        device: str = "cpu",
        dtype: ModelDtype = "auto",
        chat_template: str = "auto",
    ) -> None:
        self.prompts_per_batch = prompts_per_batch
        self.chat_template = chat_template  # model.chat_template (selfplay.rendering)
        self.dtype = dtype  # model.dtype, resolved per checkpoint (selfplay.precision)
        self.device = torch.device(device)
        self.model: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.renderer: PromptRenderer | None = None
        self.checkpoint_dir: str | None = None
        self._stop_ids: torch.Tensor | None = None
        self._pad_id = 0

    def close(self) -> None:
        """Nothing to shut down: the model lives in this process."""

    def load(self, checkpoint_dir: str) -> None:
        """Load model (in `dtype`, eval mode) and tokenizer; a no-op if this directory is loaded."""
        path = resolve_dir(checkpoint_dir)
        if path == self.checkpoint_dir:
            return
        tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = load_dtype(self.dtype, path, self.device.type)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        self.attach(model.to(self.device).eval(), tokenizer, path)

    def attach(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        checkpoint_dir: str | None = None,
    ) -> None:
        """Generate from an already-built model (e.g. one being trained), used as it is.

        The caller keeps the model in eval mode while generating. `checkpoint_dir`, when given,
        names where it came from so that a later `load` of that directory is a no-op.
        """
        stops = stop_ids(tokenizer, model.generation_config.eos_token_id, checkpoint_dir or "model")
        self.model, self.tokenizer, self.checkpoint_dir = model, tokenizer, checkpoint_dir
        self.renderer = PromptRenderer(tokenizer, self.chat_template, checkpoint_dir or "")
        self._stop_ids = torch.tensor(sorted(stops), device=self.device)
        self._pad_id = padding_id(tokenizer)

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Sample]]:
        """Return, per prompt, `params.n` samples; deterministic for a fixed seed and prompt list.

        Prompts are processed `prompts_per_batch` at a time with one generator seeded from
        `params.seed`, so a sample depends on the whole prompt list, not only on its own prompt.
        """
        if self.model is None:
            raise RuntimeError("HFBackend.generate called before load()")
        check_greedy(params)
        gen = torch.Generator(device=self.device).manual_seed(params.seed)
        out: list[list[Sample]] = []
        for start in range(0, len(prompts), self.prompts_per_batch):
            out.extend(
                self._generate_batch(prompts[start : start + self.prompts_per_batch], params, gen)
            )
        return out

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[Prompt], params: SamplingParams, gen: torch.Generator
    ) -> list[list[Sample]]:
        assert self.model is not None and self.tokenizer is not None and self._stop_ids is not None
        assert self.renderer is not None
        n, max_new = params.n, params.max_new_tokens
        encoded = self.renderer.ids_batch(prompts)
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(encoded):  # left padding, whatever the tokenizer's padding_side
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        # Positions count real tokens only, so a left-padded prompt sees the positions it has alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # Prefill each prompt once, then fan its cache out to the n samples.
        res = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = res.past_key_values
        logits = res.logits[:, -1, :].float()
        if n > 1:
            cache.batch_repeat_interleave(n)
            mask = mask.repeat_interleave(n, dim=0)
            logits = logits.repeat_interleave(n, dim=0)
        pos = positions[:, -1:].repeat_interleave(n, dim=0)

        rows = len(prompts) * n
        tokens = torch.full((rows, max_new), self._pad_id, dtype=torch.long, device=self.device)
        logprob = torch.zeros(rows, dtype=torch.float32, device=self.device)
        length = torch.full((rows,), max_new, dtype=torch.long, device=self.device)
        stopped = torch.zeros(rows, dtype=torch.bool, device=self.device)
        active = torch.arange(rows, device=self.device)  # original row of each batch row
        live = torch.ones(rows, dtype=torch.bool, device=self.device)  # batch row still generating
        for t in range(max_new):
            nxt = _sample(logits, params.temperature, params.top_p, gen)
            # S(y) is scored under the raw logits, whatever temperature and top_p sampled it.
            token_logprob = torch.log_softmax(logits, dim=-1).gather(1, nxt[:, None])[:, 0]
            rows_now = active[live]
            tokens[rows_now, t] = nxt[live]
            logprob[rows_now] += token_logprob[live]
            hit = live & torch.isin(nxt, self._stop_ids)
            if bool(hit.any()):
                stopped[active[hit]] = True
                length[active[hit]] = t + 1
                live &= ~hit
                n_live = int(live.sum())
                if n_live == 0:
                    break
                # Compact once a quarter of the batch is finished rows: copying the cache every
                # step a few rows finish costs more than computing them.
                if n_live <= 3 * live.numel() // 4:
                    keep = live.nonzero()[:, 0]
                    cache.batch_select_indices(keep)
                    active, nxt, mask, pos = active[keep], nxt[keep], mask[keep], pos[keep]
                    live = live[keep]
            if t + 1 == max_new:
                break
            pos = pos + 1
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = self.model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[:, -1, :].float()

        tokens, logprob, length, stopped = tokens.cpu(), logprob.cpu(), length.cpu(), stopped.cpu()
        ids = [tokens[r, : int(length[r])].tolist() for r in range(rows)]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        samples = [
            Sample(
                text=texts[r],
                token_ids=ids[r],
                logprob=float(logprob[r]),
                finish_reason="stop" if bool(stopped[r]) else "length",
            )
            for r in range(rows)
        ]
        return [samples[p * n : (p + 1) * n] for p in range(len(prompts))]


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator
) -> torch.Tensor:
    """Draw one token per row from (rows, vocab) logits; temperature 0 is argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always survives).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]
