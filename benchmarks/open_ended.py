"""configs/open-ended.yaml with each preference objective: held-out win rate (raw and LC, ± SE)
against the initial policy after each round, and wall time.

    python benchmarks/open_ended.py [--variants dpo,dpo+nll,dno,dno+nll] [--rounds 3]
        [--out runs/bench-open-ended] [--json results.json]

Each variant is the shipped config with `algorithm:` and `training.nll_weight` changed (the
config's learning rate, steps and epochs kept), its own run and store; the SFT model is shared
(same cache key), so every variant starts from the same initial policy and is compared with
the same baseline responses. Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from selfplay.config import parse_config
from selfplay.driver import run_loop
from selfplay.progress import RichReporter

VARIANTS = {
    "dpo": ("dpo", 0.0),
    "dpo+nll": ("dpo", 1.0),
    "dno": ("dno", 0.0),
    "dno+nll": ("dno", 1.0),
    "rft": ("rft", 0.0),
}
"""variant → (algorithm preset, training.nll_weight)."""


def variant_config(base: dict, name: str, rounds: int, out: str) -> dict:
    """The shipped config as variant `name`: its own run name and output directory."""
    data = yaml.safe_load(yaml.safe_dump(base))
    algorithm, nll_weight = VARIANTS[name]
    slug = name.replace("+", "_")
    data["run"].update(name=f"open-ended-{slug}", rounds=rounds, output_dir=f"{out}/{slug}")
    data["algorithm"] = algorithm
    data["training"]["nll_weight"] = nll_weight
    return data


def _cell(s: dict) -> str:
    if s.get("win_rate") is None:
        return "n/a"
    return f"{s['win_rate']:.3f} ± {s['win_rate_se']:.3f} (LC {s['win_rate_lc']:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/open-ended.yaml")
    parser.add_argument("--variants", default="dpo,dpo+nll,dno,dno+nll")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench-open-ended")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    base = yaml.safe_load(Path(args.config).read_text())
    results: dict[str, dict] = {}
    for name in args.variants.split(","):
        data = variant_config(base, name, args.rounds, args.out)
        cfg = parse_config(data, f"{args.config} ({name})")
        start = time.perf_counter()
        summaries = run_loop(cfg, reporter=RichReporter())
        results[name] = {
            "rounds": [s.to_dict() for s in summaries],
            "wall_s": time.perf_counter() - start,
        }
        if args.json is not None:  # after each variant: a crash keeps the finished ones
            args.json.write_text(json.dumps(results, indent=2, default=str))

    n = max(len(r["rounds"]) for r in results.values())
    print("| objective | " + " | ".join(f"r{i}" for i in range(n)) + " | wall/run |")
    print("|---" * (n + 2) + "|")
    for name, r in results.items():
        cells = " | ".join(_cell(s) for s in r["rounds"])
        print(f"| {name} | {cells} | {r['wall_s']:.0f} s |")


if __name__ == "__main__":
    main()
