"""The quickstart with each objective (DPO, DPO+NLL, RFT): per-round held-out accuracy and time.

    python benchmarks/quickstart_objectives.py [--rounds 10] [--out runs/bench]

Each variant is configs/quickstart.yaml with only `training` changed, its own run and store.
Prints a markdown table for BENCHMARKS.md. The SFT model is shared (same cache key).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from selfplay.config import parse_config
from selfplay.driver import run_loop
from selfplay.progress import RichReporter

VARIANTS = {
    "dpo": {"loss": "dpo", "nll_weight": 0.0},
    "dpo+nll": {"loss": "dpo", "nll_weight": 1.0},
    "rft": {"loss": "rft", "nll_weight": 0.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()

    results = {}
    for name in args.variants.split(","):
        data = yaml.safe_load(Path(args.config).read_text())
        data["training"].update(VARIANTS[name])
        slug = name.replace("+", "_")
        data["run"].update(name=f"bench-{slug}", output_dir=f"{args.out}/{slug}")
        cfg = parse_config(data, f"{args.config} ({name})")
        start = time.perf_counter()
        summaries = run_loop(cfg, rounds=args.rounds, reporter=RichReporter())
        results[name] = (summaries, time.perf_counter() - start)

    rounds = max(len(s) for s, _ in results.values())
    print("| objective | " + " | ".join(f"r{i}" for i in range(rounds)) + " | wall time |")
    print("|---" * (rounds + 2) + "|")
    for name, (summaries, seconds) in results.items():
        accs = " | ".join(f"{s.heldout_accuracy:.3f}" for s in summaries)
        print(f"| {name} | {accs} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
