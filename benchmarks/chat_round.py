"""One round of configs/chat-dpo-rm.yaml's shape on a random-init Qwen2-0.5B-shaped chat model:
per-stage wall time and peak GPU memory (issue 17).

Nothing is downloaded. The benchmark builds, in --out:

- a byte-level BPE tokenizer trained with `tokenizers` on synthetic text (random words, so
  the merges fill a Qwen2-sized vocabulary of --vocab tokens), wrapped as tests/chat_models.py
  wraps its own: the ChatML template, eos `<|im_end|>`, pad `<|endoftext|>`;
- the policy: a random-init Qwen2ForCausalLM of Qwen2.5-0.5B's shape (hidden 896, 24 layers,
  14 heads, 2 KV heads, MLP 4864, tied embeddings), saved in bf16 as released checkpoints are;
- the judge: a random-init Qwen2ForSequenceClassification of the same shape and tokenizer
  (one logit), in bf16;
- prompts as chat-message JSONL (a system turn and a user turn of random words, about
  --prompt-words words), the last --heldout of them held out.

and runs one round of chat-dpo-rm.yaml with the prompt file, the models and the sizes swapped
in (`generation.backend` hf, since the device has no vLLM; `pairing.truncated: keep`, since a
random-init policy almost never samples `<|im_end|>` and every response would be dropped):
the initial policy's evaluation (its held-out samples, the win-rate baseline), then the
round's steps. Each step's wall time and peak GPU memory (torch.cuda.max_memory_allocated
and max_memory_reserved, reset before each step) are printed as JSON.

    python benchmarks/chat_round.py --out /tmp/chat-round [--prompts 512] [--heldout 64]
        [--max-new-tokens 512] [--samples 8] [--prompts-per-batch 256] [--vocab 151936]

A smoke run on a CPU: --tiny (a two-layer model of width 64 in float32) with small sizes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chat_models import (  # noqa: E402
    ENDOFTEXT,
    IM_END,
    build_chat_tokenizer,
    train_byte_bpe,
)

QWEN2_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=1,
    num_key_value_heads=1,
)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def synthetic_words(n: int, seed: int = 0) -> list[str]:
    """`n` distinct random lowercase words of 3 to 10 letters."""
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 10))))
    return sorted(words)


def build_models(out: Path, words: list[str], vocab: int, shape: dict, dtype: torch.dtype) -> dict:
    """Save the tokenizer (trained on `words`), the policy and the reward model under `out`;
    their sizes."""
    from transformers import (
        GenerationConfig,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen2ForSequenceClassification,
    )

    start = time.perf_counter()
    # Each word with and without its leading space, as running text has it.
    texts = (w for word in words for w in (word, " " + word))
    tokenizer = build_chat_tokenizer("chatml", train_byte_bpe(texts, vocab))
    tokenizer_s = time.perf_counter() - start
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in (IM_END, ENDOFTEXT)]
    config = dict(
        vocab_size=vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=stop_ids[0],
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(Qwen2Config(**config)).to(dtype)
    policy.generation_config = GenerationConfig(
        eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
    )
    policy.save_pretrained(out / "policy")
    tokenizer.save_pretrained(out / "policy")
    torch.manual_seed(1)
    reward = Qwen2ForSequenceClassification(Qwen2Config(num_labels=1, **config)).to(dtype)
    reward.save_pretrained(out / "reward")
    tokenizer.save_pretrained(out / "reward")
    return {
        "tokenizer_vocab": len(tokenizer),
        "tokenizer_train_s": round(tokenizer_s, 1),
        "policy_params": sum(p.numel() for p in policy.parameters()),
        "reward_params": sum(p.numel() for p in reward.parameters()),
    }


def write_prompts(path: Path, words: list[str], n: int, heldout: int, length: int) -> None:
    """`n` chat prompts (a system and a user turn of random words) as JSONL, the last
    `heldout` held out."""
    rng = random.Random(1)
    with open(path, "w") as f:
        for i in range(n):
            user = " ".join(rng.choice(words) for _ in range(rng.randint(length // 2, length)))
            messages = [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": user + "?"},
            ]
            line = {"messages": messages} | ({"split": "heldout"} if i >= n - heldout else {})
            f.write(json.dumps(line) + "\n")


def round_config(out: Path, args: argparse.Namespace) -> dict:
    """configs/chat-dpo-rm.yaml with the built models, the prompt file and the sizes."""
    cfg = yaml.safe_load((ROOT / "configs" / "chat-dpo-rm.yaml").read_text())
    cfg["run"] |= {"rounds": 1, "output_dir": str(out / "run")}
    cfg["task"] = {
        "name": "jsonl",
        "path": str(out / "prompts.jsonl"),
        "prompts_per_round": args.prompts,
    }
    cfg["model"] |= {"path": str(out / "policy"), "dtype": args.dtype}
    cfg["generation"] = {
        "backend": "hf",
        "samples_per_prompt": args.samples,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": args.max_new_tokens,
        "prompts_per_batch": args.prompts_per_batch,
    }
    cfg["judge"]["reward_model"] |= {"path": str(out / "reward"), "dtype": args.dtype}
    cfg["pairing"]["truncated"] = "keep"
    cfg["evaluation"]["batch_size"] = args.heldout
    cfg["store"] = {"url": f"sqlite:///{out / 'store.db'}"}
    return cfg


class StepMeter:
    """Wraps the driver's step functions: each call's wall time and peak GPU memory."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def wrap(self, name: str, fn):  # noqa: ANN001, ANN201
        def measured(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
            row = {"step": name, "seconds": round(time.perf_counter() - start, 2)}
            if cuda:
                row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
            self.rows.append(row)
            print(json.dumps(row), flush=True)
            return result

        return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=512, help="prompts per round")
    parser.add_argument("--heldout", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=60)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--prompts-per-batch", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tiny", action="store_true", help="a CPU smoke run: tiny model")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.tiny:
        args.dtype = "float32"
    args.out.mkdir(parents=True, exist_ok=True)
    words = synthetic_words(max(2_000, args.vocab))
    sizes = build_models(
        args.out, words, args.vocab, TINY if args.tiny else QWEN2_05B, getattr(torch, args.dtype)
    )
    print(json.dumps(sizes), flush=True)
    write_prompts(
        args.out / "prompts.jsonl",
        words,
        args.prompts + args.heldout,
        args.heldout,
        args.prompt_words,
    )
    (args.out / "config.yaml").write_text(yaml.safe_dump(round_config(args.out, args)))

    from selfplay import driver, stages
    from selfplay.config import load_config

    meter = StepMeter()
    for name in list(stages.STEPS):
        stages.STEPS[name] = meter.wrap(name, stages.STEPS[name])
    driver.evaluate_checkpoint = meter.wrap("initial evaluation", driver.evaluate_checkpoint)
    start = time.perf_counter()
    summaries = driver.run_loop(load_config(args.out / "config.yaml"), rounds=1)
    total = time.perf_counter() - start
    summary = summaries[-1]
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "sizes": sizes,
        "steps": meter.rows,
        "round_wall_time_s": summary.wall_time_s,
        "run_loop_s": round(total, 1),
        "pairs": summary.pairs,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
