"""The quickstart with each objective (DPO, DPO+NLL, RFT): per-round held-out accuracy and time.

    python benchmarks/quickstart_objectives.py [--rounds 10] [--out runs/bench]
        [--variants dpo,dpo+nll,rft] [--seeds 0,1,2] [--set model.sft.steps=1500 ...]
        [--json results.json]

Each variant is configs/quickstart.yaml with only `training` changed, its own run and store.
--seeds runs each variant once per seed (run.seed: the tiny model's init, its SFT data, the
held-out split and every sample); without it, the config's seed. --set KEY=VALUE overrides a
dotted config field for every run (the value read as YAML: `null`, numbers, strings), e.g. an
SFT recipe (`model.sft.target_accuracy=null`, `model.sft.steps=1500`, `task.heldout_size=2000`).
Prints a markdown table for BENCHMARKS.md: the SFT model's held-out accuracy (initial) and each
round's, per variant and seed, then mean ± sd over the seeds. The SFT model is built once per
seed and SFT recipe and shared between variants (same cache key).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from selfplay.config import parse_config
from selfplay.driver import run_loop
from selfplay.progress import RichReporter

VARIANTS = {
    "dpo": {"loss": "dpo", "nll_weight": 0.0},
    "dpo+nll": {"loss": "dpo", "nll_weight": 1.0},
    "rft": {"loss": "rft", "nll_weight": 0.0},
}
_INITIAL = re.compile(r"initial policy: held-out accuracy ([0-9.]+)")


class _Recorder(RichReporter):
    """RichReporter that also keeps the initial policy's held-out accuracy from its line."""

    initial: float | None = None

    def line(self, text: str) -> None:
        match = _INITIAL.search(text)
        if match is not None:
            self.initial = float(match.group(1))
        super().line(text)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`data` with each `a.b.c=VALUE` set (VALUE parsed as YAML); missing sections created."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return data


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else ""
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default=None, help="comma-separated run seeds")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", default=None, help="write the raw figures here")
    args = parser.parse_args()

    base = apply_overrides(yaml.safe_load(Path(args.config).read_text()), args.overrides)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [base["run"]["seed"]]
    results: list[dict[str, Any]] = []
    for name in args.variants.split(","):
        for seed in seeds:
            data = yaml.safe_load(yaml.safe_dump(base))
            data["training"].update(VARIANTS[name])
            slug = name.replace("+", "_") + (f"-s{seed}" if args.seeds else "")
            data["run"].update(name=f"bench-{slug}", output_dir=f"{args.out}/{slug}", seed=seed)
            cfg = parse_config(data, f"{args.config} ({name}, seed {seed})")
            reporter = _Recorder()
            start = time.perf_counter()
            summaries = run_loop(cfg, rounds=args.rounds, reporter=reporter)
            results.append(
                {
                    "variant": name,
                    "seed": seed,
                    "initial": reporter.initial,
                    "rounds": [s.heldout_accuracy for s in summaries],
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            if args.json:
                payload = {"config": args.config, "overrides": args.overrides, "runs": results}
                Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")

    rounds = max(len(r["rounds"]) for r in results)
    cols = ["initial", *(f"r{i}" for i in range(rounds))]
    print("| objective | seed | " + " | ".join(cols) + " | wall time |")
    print("|---" * (len(cols) + 3) + "|")
    for r in results:
        accs = " | ".join(f"{a:.3f}" if a is not None else "" for a in [r["initial"], *r["rounds"]])
        print(f"| {r['variant']} | {r['seed']} | {accs} | {r['seconds']:.0f} s |")
    if len(seeds) > 1:
        for name in args.variants.split(","):
            runs = [r for r in results if r["variant"] == name]
            series = [[r["initial"] for r in runs]]
            series += [
                [r["rounds"][i] for r in runs if len(r["rounds"]) > i] for i in range(rounds)
            ]
            cells = " | ".join(_mean_sd([v for v in s if v is not None]) for s in series)
            print(f"| {name} | mean ± sd | {cells} | |")


if __name__ == "__main__":
    main()
