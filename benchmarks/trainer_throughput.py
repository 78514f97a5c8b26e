"""Trainer throughput: selfplay's pair trainer against TRL's DPOTrainer, and MFU on a GPU.

CPU, the peer comparison (same tiny model, same 4,096 pairs, 32 pairs per step, one epoch):

    python benchmarks/trainer_throughput.py --pairs 4096

TRL is configured fairly for a CPU: bf16=False, gradient_checkpointing=False,
precompute_ref_log_probs=True, datasets caching off (so its reference precompute really runs
inside the timed call), its reference precompute batched by pairs (REF_BATCH_PAIRS), selfplay's by its token budget.
Both timings include tokenizing and the reference log-prob pass. Besides wall-clock pairs/s
each run reports pairs per CPU-second of its own process, less sensitive to a busy machine.
Peak memory is the process's max RSS growth during each trainer, measured in a fresh
subprocess per trainer.

GPU (no peer; absolute figures): throughput and model FLOPs utilisation of a DPO step in bf16
autocast (float32 master weights, fused AdamW) on a randomly initialised Qwen2-0.5B-shaped model,
128-token prompts and 384-token responses:

    python benchmarks/trainer_throughput.py --gpu [--steps 20] [--batch 32] [--accum 1]
        [--compile] [--bf16-weights | --fsdp] [--shared] [--head-save-gib G] [--profile FILE]
        [--peak-tflops T]

--bf16-weights trains bf16 weights with float32 master copies in the optimizer
(training.bf16_weights) instead of autocast over float32 weights. --fsdp trains as one FSDP2
rank (training.distributed: {strategy: fsdp, nproc: 1}): the model wrapped by the ranks' own
`selfplay.training.distributed.wrap`, bf16 parameters gathered per layer, float32 gradient
reduction and masters. MFU = model FLOPs per step /
step time / the device's dense bf16 peak (by name, or --peak-tflops). Model FLOPs
(step_flops) count what the step needs, forward + backward as 3 × forward: the blocks' matrix
work on every fed token, the lm_head only where logits are kept, attention on the (query, key)
pairs the mask allows. Prefix sharing feeds fewer tokens, so its MFU counts fewer FLOPs for
the same pairs: compare pairs/s between layouts, MFU within one.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time

import torch

from selfplay.config import TrainingConfig
from selfplay.scoring import SCORE_TOKENS_PER_BATCH

REF_BATCH_PAIRS = 256
"""Pairs per reference log-prob batch, the same for both trainers (TRL's default is the
training batch, 32; a larger one only speeds its precompute up)."""


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _figures(n: int, start: float, cpu: float, base: float) -> dict:
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {
        "pairs_per_s": n / seconds,
        "seconds": seconds,
        "pairs_per_cpu_s": n / cpu_seconds,
        "peak_rss_growth_mb": _rss_mb() - base,
    }


def _tiny(seed: int = 0):  # noqa: ANN202
    from selfplay.config import TinyModelConfig
    from selfplay.tiny_model import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    return build_model(TinyModelConfig(), tokenizer), tokenizer


def _text_pairs(n: int) -> list[tuple[str, str, str]]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        wrong = a + b + rng.choice([-10, -1, 1, 10])
        out.append((f"Q:{a}+{b}=", f"A:{a + b}", f"A:{wrong}"))
    return out


def run_selfplay(n: int, batch: int) -> dict:
    from selfplay.training.logprobs import score_responses
    from selfplay.training.trainer import PairExample, train_on_pairs

    model, tok = _tiny()
    eos = [tok.eos_token_id]
    rows = _text_pairs(n)
    base = _rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    # Tokenizing is timed, as it is in TRL's (DPOTrainer tokenizes the dataset in __init__).
    data = [
        (tok(p)["input_ids"], tok(c)["input_ids"] + eos, tok(r)["input_ids"] + eos)
        for p, c, r in rows
    ]
    ref = score_responses(
        model,
        [d[0] for d in data] * 2,
        [d[1] for d in data] + [d[2] for d in data],
        tok.pad_token_id,
        max_tokens_per_batch=SCORE_TOKENS_PER_BATCH,  # selfplay's own budget
    )
    pairs = [PairExample(p, c, r, ref[i], ref[n + i]) for i, (p, c, r) in enumerate(data)]
    cfg = TrainingConfig(loss="dpo", lr=1e-4, batch_size=batch, max_steps=10**6, epochs=1)
    train_on_pairs(model, pairs, cfg, tok.pad_token_id, seed=0)
    return _figures(n, start, cpu, base)


def run_trl(n: int, batch: int) -> dict:
    import datasets
    from trl import DPOConfig, DPOTrainer

    datasets.disable_caching()
    model, tok = _tiny()
    ref_model, _ = _tiny()
    rows = _text_pairs(n)
    ds = datasets.Dataset.from_dict(
        {
            "prompt": [r[0] for r in rows],
            "chosen": [r[1] for r in rows],
            "rejected": [r[2] for r in rows],
        }
    )
    args = DPOConfig(
        output_dir="/tmp/trl-bench",
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=1e-4,
        beta=0.1,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=REF_BATCH_PAIRS,
        report_to=[],
        save_strategy="no",
        logging_steps=10**6,
        dataloader_num_workers=0,
        use_cpu=True,
    )
    base = _rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    trainer = DPOTrainer(
        model=model, ref_model=ref_model, args=args, train_dataset=ds, processing_class=tok
    )
    trainer.train()
    return _figures(n, start, cpu, base)


PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 peaks by device name (the first key the name contains wins)."""


def _peak_tflops(name: str) -> float:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    raise SystemExit(f"unknown peak for {name!r}: pass --peak-tflops")


def step_flops(
    cfg: object, batch: int, prompt_len: int, response_len: int, shared: bool
) -> dict[str, float]:
    """Model FLOPs of one training step (forward + backward = 3 × forward) of `batch` pairs.

    Counts what the model has to compute, not what the kernels happen to do: the transformer
    blocks' matrix work on every fed token (with prefix sharing a pair feeds P + 2R − 2 tokens,
    the last response token only being a target; unshared, two rows of P + R), the lm_head only
    on the positions whose logits are kept, and attention on the (query, key) pairs the mask
    allows (causal, and with sharing a response sees the prompt and itself only).
    """
    h, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    block = layers * (h * (h + 2 * kv) + h * h + 3 * h * cfg.intermediate_size)
    p, r = prompt_len, response_len
    if shared:
        fed, logits = p + 2 * (r - 1), 2 * (r - 1) + 1
        attended = p * (p + 1) // 2 + 2 * ((r - 1) * p + (r - 1) * r // 2)
    else:
        fed, logits = 2 * (p + r), 2 * (r + 1)
        attended = 2 * ((p + r) * (p + r + 1) // 2)
    # QK^T and AV: 2 matmuls × 2 FLOPs × h per attended pair and layer.
    forward = 2 * block * fed + 2 * h * vocab * logits + 4 * h * layers * attended
    return {"flops": 3.0 * forward * batch, "fed_tokens": float(fed * batch)}


def run_gpu(
    steps: int,
    batch: int,
    prompt_len: int,
    response_len: int,
    peak: float | None,
    shared: bool,
    accum: int,
    profile: str | None,
    compile_layers: bool,
    bf16_weights: bool,
    fsdp: bool = False,
) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from selfplay.training import logprobs
    from selfplay.training.trainer import PairExample, train_on_pairs

    cfg = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg)
    if compile_layers:
        from selfplay.training.trainer import compile_layers as compile_them

        compile_them(model)
    n_params = sum(p.numel() for p in model.parameters())
    distributed = {"strategy": "single"}
    if fsdp:
        # One rank of the ranks' own code path: a process group of one, the layers then the
        # root fully_shard-ed by selfplay.training.distributed.wrap (bf16 parameters gathered,
        # float32 reduction, float32 masters in the optimizer).
        import os

        import torch.distributed as dist

        from selfplay.training.distributed import wrap

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517", RANK="0", WORLD_SIZE="1")
        dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
        distributed = {"strategy": "fsdp", "nproc": 1}
    rng = random.Random(0)

    def seq(k: int) -> list[int]:
        return [rng.randrange(1, cfg.vocab_size) for _ in range(k)]

    warmup = 3
    pairs = [
        PairExample(seq(prompt_len), seq(response_len), seq(response_len), -1.0, -1.0)
        for _ in range(batch * accum * (steps + warmup))
    ]
    tcfg = TrainingConfig(
        loss="dpo",
        lr=1e-6,
        batch_size=batch,
        grad_accum_steps=accum,
        max_steps=steps + warmup,
        epochs=1,
        shared_prompt=shared,
        bf16_weights=bf16_weights,
        distributed=distributed,
    )
    if fsdp:
        model = wrap(model, tcfg, torch.device("cuda", 0))
    times: list[float] = []
    last = [0.0]
    prof = None
    if profile:
        from torch.profiler import ProfilerActivity, schedule

        prof = torch.profiler.profile(
            activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
            schedule=schedule(wait=warmup, warmup=1, active=2, repeat=1),
        )
        prof.start()

    def on_step(step: int, metrics: dict[str, float]) -> None:
        torch.cuda.synchronize()
        now = time.perf_counter()
        if step > warmup:
            times.append(now - last[0])
        last[0] = now
        if prof is not None:
            prof.step()

    torch.cuda.synchronize()
    last[0] = time.perf_counter()
    train_on_pairs(model, pairs, tcfg, pad_id=0, seed=0, on_step=on_step)
    if prof is not None:
        prof.stop()
        with open(profile, "w") as f:
            f.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))
    name = torch.cuda.get_device_name()
    peak = peak if peak is not None else _peak_tflops(name)
    per_step = sorted(times)[len(times) // 2]  # median
    work = step_flops(model.config, batch * accum, prompt_len, response_len, shared)
    return {
        "device": name,
        "params": n_params,
        "shared_prompt": shared,
        "compiled_layers": compile_layers,
        "bf16_weights": bf16_weights,
        "fsdp": fsdp,
        "head_save_gib": logprobs.HEAD_SAVE_BYTES / 2**30,
        "pairs_per_step": batch * accum,
        "micro_batch": batch,
        "s_per_step": per_step,
        "pairs_per_s": batch * accum / per_step,
        "pair_tokens_per_s": batch * accum * 2 * (prompt_len + response_len) / per_step,
        "fed_tokens_per_s": work["fed_tokens"] / per_step,
        "model_tflops_per_s": work["flops"] / per_step / 1e12,
        "mfu": work["flops"] / per_step / (peak * 1e12),
        "peak_tflops": peak,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--only", choices=["selfplay", "trl"], default=None)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--response-len", type=int, default=384)
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="bf16 dense peak (default: by device)"
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="one row per pair (prefix sharing); default two, the trainer's default on a GPU",
    )
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--profile", default=None, help="write a kernel profile table here")
    parser.add_argument("--compile", action="store_true", help="torch.compile each layer")
    parser.add_argument(
        "--bf16-weights", action="store_true", help="bf16 weights, float32 masters (not autocast)"
    )
    parser.add_argument(
        "--fsdp",
        action="store_true",
        help="train as one FSDP2 rank (training.distributed fsdp, nproc 1) instead of single",
    )
    parser.add_argument(
        "--head-save-gib",
        type=float,
        default=None,
        help="logprobs.HEAD_SAVE_BYTES in GiB (keep d logits for the backward up to this size)",
    )
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.head_save_gib is not None:
        from selfplay.training import logprobs

        logprobs.HEAD_SAVE_BYTES = int(args.head_save_gib * 2**30)
    if args.gpu:
        print(
            json.dumps(
                run_gpu(
                    args.steps,
                    args.batch,
                    args.prompt_len,
                    args.response_len,
                    args.peak_tflops,
                    args.shared,
                    args.accum,
                    args.profile,
                    args.compile,
                    args.bf16_weights,
                    args.fsdp,
                )
            )
        )
        return
    if args.only:
        fn = run_selfplay if args.only == "selfplay" else run_trl
        print(json.dumps(fn(args.pairs, args.batch)))
        return
    results = {}
    for name in ("trl", "selfplay", "trl", "selfplay"):  # interleaved, two of each
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--only",
                name,
                "--pairs",
                str(args.pairs),
                "--batch",
                str(args.batch),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.setdefault(name, []).append(r)
        print(name, r, flush=True)
    best = {k: max(v, key=lambda r: r["pairs_per_s"]) for k, v in results.items()}
    ratio = best["selfplay"]["pairs_per_s"] / best["trl"]["pairs_per_s"]
    cpu_ratio = best["selfplay"]["pairs_per_cpu_s"] / best["trl"]["pairs_per_cpu_s"]
    print("| trainer | pairs/s (best of 2) | its pairs per CPU-second | peak RSS growth |")
    print("|---|---|---|---|")
    for k, r in best.items():
        print(
            f"| {k} | {r['pairs_per_s']:.0f} | {r['pairs_per_cpu_s']:.0f} "
            f"| {r['peak_rss_growth_mb']:.0f} MB |"
        )
    print(f"selfplay / TRL = {ratio:.2f}x (per CPU-second {cpu_ratio:.2f}x)")


if __name__ == "__main__":
    main()
