"""Peak memory per rank of FSDP training on CPU: 1 rank against N ranks on the same model.

Builds a random Llama of about --params-m million parameters (default 380: 381M, 1,453 MiB of
float32 weights, so the sharded parameters, gradients and AdamW state dominate the peak), saves
it, and trains it for a few steps with `training.distributed: {strategy: fsdp, nproc: N}` for each
N of --nproc, each in a fresh subprocess. The peak per rank is the largest max RSS among that
subprocess's descendants (getrusage(RUSAGE_CHILDREN) once torchrun has waited for its ranks):
the ranks are alike, so that is any rank's. It includes ~600 MB of interpreter, torch and
transformers (the baseline a 5M-parameter smoke run shows); above it expect about 16/N bytes a
parameter of training state plus the full float32 weights each rank loads before sharding
(4 B/param) and, on rank 0, the gathered float32 state dict it saves (4 B/param: the checkpoint
is saved in float32 here, so no cast copy).

    python benchmarks/fsdp_memory.py [--params-m 380] [--nproc 1 2] [--steps 3]

A smoke run: --params-m 5.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAIR_TOKENS = (64, 64)  # prompt, each response


def _model_shape(params_m: float) -> dict:
    """A Llama config of about `params_m` million parameters: 16 layers of width h (a multiple
    of 64), each 16 h² (attention's q, k, v, o: 4 h²; the MLP's three h × 4h matrices: 12 h²),
    and a 1,000-token vocabulary (embeddings and head: 2,000 h more)."""
    layers = 16
    hidden = int((params_m * 1e6 / (16 * layers)) ** 0.5) // 64 * 64 or 64
    return {
        "vocab_size": 1000,
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "num_key_value_heads": max(1, hidden // 64),
        "max_position_embeddings": 256,
    }


def _build(path: Path, params_m: float) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from selfplay.tiny_model import build_tokenizer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**_model_shape(params_m), pad_token_id=0))
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def _train(policy: Path, nproc: int, steps: int) -> dict:
    """One training on `nproc` ranks (this runs in its own subprocess)."""
    import torch

    from selfplay.training.config import TrainingConfig
    from selfplay.training.distributed import Job, train_distributed
    from selfplay.training.trainer import PairExample

    gen = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(4, 1000, (n,), generator=gen).tolist()

    prompt, response = PAIR_TOKENS
    pairs = [PairExample(ids(prompt), ids(response), ids(response)) for _ in range(4 * steps)]
    cfg = TrainingConfig(
        batch_size=4, max_steps=steps, distributed={"strategy": "fsdp", "nproc": nproc}
    )
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        job = Job(str(policy), pairs, cfg, 0, 0, str(Path(work) / "checkpoint"))
        train_distributed(job, Path(work) / "job")
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"nproc": nproc, "peak_rss_mb_per_rank": peak, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params-m", type=float, default=380.0)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--_train", nargs=2, help=argparse.SUPPRESS)  # policy, nproc
    args = parser.parse_args()
    if args._train:
        print(json.dumps(_train(Path(args._train[0]), int(args._train[1]), args.steps)))
        return
    with tempfile.TemporaryDirectory() as work:
        policy = Path(work) / "policy"
        n = _build(policy, args.params_m)
        print(f"model: {n / 1e6:.0f}M parameters, {4 * n / 2**20:.0f} MiB of float32 weights")
        for nproc in args.nproc:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--steps",
                    str(args.steps),
                    "--_train",
                    str(policy),
                    str(nproc),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["bytes_per_param"] = row["peak_rss_mb_per_rank"] * 2**20 / n
            print(json.dumps(row))


if __name__ == "__main__":
    main()
