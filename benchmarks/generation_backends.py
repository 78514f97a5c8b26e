"""Generated tokens/s of selfplay's `hf` and `vllm` backends against each engine called directly.

Same model, prompts, K and sampling for all four; the bare vLLM calls go to the very engine the
`vllm` backend built (one engine in memory). Also the per-round checkpoint load time of each
backend. Run:  python benchmarks/generation_backends.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from selfplay.config import EngineConfig, TinyModelConfig
from selfplay.generation import HFBackend, SamplingParams
from selfplay.generation.vllm import VLLMBackend
from selfplay.tasks import ArithmeticTask
from selfplay.tasks.base import Prompt
from selfplay.tiny_model import build_model, build_tokenizer

SIZES = {
    # The quickstart's model (0.86M parameters) and a wider, deeper one (~27M).
    "0.86M": TinyModelConfig(hidden_size=128, num_layers=4, num_heads=2, intermediate_size=384),
    "27M": TinyModelConfig(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1536),
}
# (model size, new tokens, prompts): K=8 everywhere; fewer prompts where a call is slower.
CASES = [("0.86M", 8, 256), ("0.86M", 64, 64), ("27M", 8, 32), ("27M", 64, 8)]
K = 8
REPEATS = 2


def save_model(cfg: TinyModelConfig, seed: int, path: Path) -> str:
    tok = build_tokenizer()
    torch.manual_seed(seed)
    build_model(cfg, tok).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def timed(fn: Callable[..., int], *args: object) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = fn(*args)
    return time.perf_counter() - start, tokens


def bare_hf(model: torch.nn.Module, tok: object, prompts: list[str], new: int) -> int:
    """transformers' own `model.generate`, 256 prompts a call (as the hf backend chunks)."""
    tokens = 0
    for i in range(0, len(prompts), 256):
        enc = tok(prompts[i : i + 256], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=new,
                num_return_sequences=K,
                pad_token_id=tok.pad_token_id,
            )
        gen = out[:, enc["input_ids"].shape[1] :]
        # Count up to and including the first EOS, as the backends do.
        for row in gen.tolist():
            tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return tokens


def bare_vllm(llm: object, prompts: list[str], new: int, seed: int) -> int:
    """`LLM.generate` on text prompts with vLLM's defaults (detokenized text, no log-probs)."""
    from vllm import SamplingParams as VSP

    params = [
        VSP(n=K, temperature=1.0, top_p=1.0, max_tokens=new, seed=seed + i * K)
        for i in range(len(prompts))
    ]
    outs = llm.generate(prompts, params, use_tqdm=False)
    return sum(len(c.token_ids) for o in outs for c in o.outputs)


def ours(backend: object, prompts: list[str], new: int, seed: int) -> int:
    params = SamplingParams(n=K, temperature=1.0, max_new_tokens=new, seed=seed)
    outputs = backend.generate([Prompt(p) for p in prompts], params)
    return sum(len(s.token_ids) for samples in outputs for s in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="first case only, one repeat")
    args = parser.parse_args()
    cases, repeats = (CASES[:1], 1) if args.quick else (CASES, REPEATS)
    print(f"torch threads {torch.get_num_threads()}; K={K}; temperature 1; best of {repeats}")
    rows, loads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size in dict.fromkeys(c[0] for c in cases):
            a = save_model(SIZES[size], 0, Path(tmp) / f"{size}-a")
            b = save_model(SIZES[size], 1, Path(tmp) / f"{size}-b")
            n_params = sum(
                p.numel() for p in build_model(SIZES[size], build_tokenizer()).parameters()
            )
            hf = HFBackend()
            hf.load(a)
            vl = VLLMBackend(EngineConfig(gpu_memory_utilization=0.1))
            vl.load(a)
            # Warm up both engines (the first vLLM call compiles kernels).
            ours(vl, ["Q:1+1="], 8, 0)
            ours(hf, ["Q:1+1="], 8, 0)
            # Per-round checkpoint load (the quickstart's model): the next round's weights.
            for backend, name in ((hf, "hf"), (vl, "vllm")) if size == "0.86M" else ():
                start = time.perf_counter()
                backend.load(b)
                loads.append((size, name, time.perf_counter() - start))
            ours(vl, ["Q:1+1="], 8, 0)
            for case_size, new, n_prompts in cases:
                if case_size != size:
                    continue
                prompts = [p.text for p in ArithmeticTask(0, 500).train_prompts(0, n_prompts)]
                runs: dict[str, list[float]] = {}
                for rep in range(repeats):  # interleaved, so load changes hit all four alike
                    for name, fn, fn_args in (
                        ("hf bare", bare_hf, (hf.model, hf.tokenizer, prompts, new)),
                        ("hf selfplay", ours, (hf, prompts, new, rep)),
                        ("vllm bare", bare_vllm, (vl.llm, prompts, new, rep)),
                        ("vllm selfplay", ours, (vl, prompts, new, rep)),
                    ):
                        seconds, tokens = timed(fn, *fn_args)
                        runs.setdefault(name, []).append(tokens / seconds)
                best = {name: max(v) for name, v in runs.items()}
                rows.append((size, n_params, new, n_prompts, best, runs))
                print(
                    f"{size} ({n_params / 1e6:.2f}M) {n_prompts} prompts x K={K} x <= {new} new: "
                    + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in best.items())
                    + f"; selfplay/bare hf {best['hf selfplay'] / best['hf bare']:.3f}, "
                    f"vllm {best['vllm selfplay'] / best['vllm bare']:.3f}; "
                    f"vllm/hf (selfplay) {best['vllm selfplay'] / best['hf selfplay']:.2f}",
                    flush=True,
                )
                for name, v in runs.items():
                    print(f"    {name}: " + ", ".join(f"{x:,.0f}" for x in v), flush=True)
            vl.close()
    for size, name, seconds in loads:
        print(f"checkpoint load, {size}, {name}: {seconds:.2f}s")
    print("median vllm/hf selfplay ratio:", statistics.median(
        r[4]["vllm selfplay"] / r[4]["hf selfplay"] for r in rows
    ))  # fmt: skip


if __name__ == "__main__":
    main()
