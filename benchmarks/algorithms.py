"""The algorithm table: every round procedure on the quickstart task, several seeds each.

    python benchmarks/algorithms.py [--algorithms dpo,rft,...] [--seeds 0,1,2] [--rounds 10]
        [--jobs 4] [--flip-rate 0.2] [--epsilon 0.2] [--nll-weight 1] [--lr 1e-4]
        [--out runs/algorithms] [--json results.json]

Each (algorithm, seed) is configs/quickstart.yaml with `algorithm:` set (the preset fills the
loss, its reference, the pair builder and the paper's loss hyper-parameters) and the run seed
changed; everything else (prompts per round, K = 8 samples per prompt, training lr, steps and
epochs) stays the quickstart's, so every row has the same generation budget per round. XPO
splits its 8 samples into 4 from the policy and 4 from the reference. --flip-rate wraps the
verifier in label noise (the cdpo/rdpo robustness experiment) and --epsilon sets cdpo's and
rdpo's ε (the presets': 0.1); --nll-weight adds the NLL-on-chosen term to every algorithm and
--lr replaces the quickstart's learning rate. Runs go to parallel worker processes (--jobs);
the SFT model of each seed is built once, before them. Prints markdown
(mean ± sd of held-out accuracy per round over the seeds, mean wall time per run) and writes
the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import yaml

from selfplay.algorithms import ALGORITHM_PRESETS
from selfplay.config import parse_config
from selfplay.driver import run_loop
from selfplay.sft import prepare_policy
from selfplay.tasks import make_task

DEFAULT = "dpo,dpo+nll,rft,dno,inpo,sppo,ipo,simpo,chipo,xpo,self_rewarding"


def config_for(
    base: dict,
    algorithm: str,
    seed: int,
    rounds: int,
    flip: float,
    out: str,
    nll_weight: float | None = None,
    epsilon: float | None = None,
    lr: float | None = None,
) -> dict:
    data = yaml.safe_load(yaml.safe_dump(base))
    slug = f"{algorithm.replace('+', '_')}-s{seed}" + (f"-flip{flip}" if flip else "")
    slug += f"-nll{nll_weight}" if nll_weight is not None else ""
    slug += f"-eps{epsilon}" if epsilon is not None and algorithm in ("cdpo", "rdpo") else ""
    slug += f"-lr{lr}" if lr is not None else ""
    data["run"].update(name=slug, seed=seed, rounds=rounds, output_dir=f"{out}/{slug}")
    data["algorithm"] = algorithm
    # The preset decides these; the quickstart's own values would override it.
    for key in ("loss", "beta", "nll_weight", "reference"):
        data["training"].pop(key, None)
    data.pop("pairing", None)
    if algorithm == "xpo":
        data["generation"]["samples_per_prompt"] = 4  # + 4 reference samples (the preset)
    if flip:
        data.setdefault("judge", {})["flip_rate"] = flip
    if nll_weight is not None:
        data["training"]["nll_weight"] = nll_weight
    if epsilon is not None and algorithm in ("cdpo", "rdpo"):
        data["training"]["epsilon"] = epsilon
    if lr is not None:
        data["training"]["lr"] = lr
    return data


def run_one(job: tuple[str, int, dict]) -> tuple[str, int, list[float | None], float, str]:
    algorithm, seed, data = job
    start = time.perf_counter()
    try:
        summaries = run_loop(parse_config(data, f"{algorithm} seed {seed}"))
        accs = [s.heldout_accuracy for s in summaries]
        error = ""
    except Exception as err:  # one failing algorithm must not lose the others' results
        accs, error = [], f"{type(err).__name__}: {err}"
    return algorithm, seed, accs, time.perf_counter() - start, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--algorithms", default=DEFAULT)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--flip-rate", type=float, default=0.0)
    parser.add_argument("--nll-weight", type=float, default=None)
    parser.add_argument("--epsilon", type=float, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--out", default="runs/algorithms")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    base = yaml.safe_load(Path(args.config).read_text())
    algorithms = args.algorithms.split(",")
    unknown = [a for a in algorithms if a not in ALGORITHM_PRESETS]
    if unknown:
        parser.error(f"unknown algorithm(s) {unknown}; known: {sorted(ALGORITHM_PRESETS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [
        (
            a,
            s,
            config_for(
                base,
                a,
                s,
                args.rounds,
                args.flip_rate,
                args.out,
                args.nll_weight,
                args.epsilon,
                args.lr,
            ),
        )
        for a in algorithms
        for s in seeds
    ]
    for seed in seeds:  # build each seed's SFT model once, before the parallel runs
        cfg = parse_config(jobs[[j[1] for j in jobs].index(seed)][2])
        prepare_policy(cfg.model, make_task(cfg.task, seed), seed)

    start = time.perf_counter()
    stream = open(args.json + "l", "a") if args.json else None  # noqa: SIM115 (one line per run)
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        results = []
        for r in pool.imap_unordered(run_one, jobs):
            results.append(r)
            if stream:
                stream.write(json.dumps(r) + "\n")
                stream.flush()
            a, s, accs, seconds, error = r
            final = f"{accs[-1]:.3f}" if accs and accs[-1] is not None else "—"
            print(f"done {a} seed {s}: final {final} in {seconds:.0f}s {error}", flush=True)
    print(f"all runs: {time.perf_counter() - start:.0f}s with {args.jobs} jobs\n")

    rows = max((len(r[2]) for r in results), default=0)
    print("| algorithm | " + " | ".join(f"r{i}" for i in range(rows)) + " | best | wall/run |")
    print("|---" * (rows + 3) + "|")
    for a in algorithms:
        mine = [r for r in results if r[0] == a]
        cells = []
        for i in range(rows):
            vals = [r[2][i] for r in mine if len(r[2]) > i and r[2][i] is not None]
            cells.append(_mean_sd(vals))
        best = [max(v for v in r[2] if v is not None) for r in mine if r[2]]
        wall = statistics.mean(r[3] for r in mine)
        errors = {r[4] for r in mine if r[4]}
        note = f" ({'; '.join(sorted(errors))})" if errors else ""
        print(f"| {a}{note} | " + " | ".join(cells) + f" | {_mean_sd(best)} | {wall:.0f} s |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def _mean_sd(vals: list[float]) -> str:
    if not vals:
        return "—"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"


if __name__ == "__main__":
    main()
