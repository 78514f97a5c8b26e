"""Likelihood displacement: what one round of a preference loss does to the chosen responses.

    python benchmarks/likelihood_displacement.py [--variants dpo,dpo-lr1e-4,dpop]
        [--config configs/quickstart.yaml] [--out runs/displacement] [--probe 256]
        [--every 25] [--eval-at 0,50,150,300] [--json results.json]

Round 0 of configs/quickstart.yaml makes the pairs once (its own run in <out>/pairs, trained
for one step only: its pairs depend on the SFT policy alone). Each variant then trains a fresh
copy of the SFT policy on those pairs with the quickstart's `training` section, only the
variant's fields changed (VARIANTS), and every `--every` steps scores a fixed probe of pairs:
the mean per-token log-prob of the chosen and of the rejected responses under the policy and
under the reference (the SFT model = π_0, round 0's reference for both `previous` and `sft`),
the DPO margin h = ℓ(y_w) − ℓ(y_l) (summed log-ratios), and where the chosen response's
change in log-prob lies: on the tokens before the first one where chosen and rejected
differ (`A:`, shared leading digits), on that first differing token, or after it (the
remaining digits and EOS). Greedy held-out accuracy at the `--eval-at` steps.
Prints markdown tables; writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, PreTrainedModel

from db import queries
from db.engine import make_engine, session_factory
from selfplay.config import SelfplayConfig, parse_config
from selfplay.driver import run_loop
from selfplay.generation.base import SamplingParams
from selfplay.generation.hf import HFBackend
from selfplay.rendering import PromptRenderer, padding_id
from selfplay.stages.context import derive_seed
from selfplay.stages.evaluate import sample_once
from selfplay.stages.train import pair_prompt
from selfplay.tasks import make_task
from selfplay.training.logprobs import build_batch
from selfplay.training.trainer import PairExample, load_trainable, planned_steps, train_on_pairs

VARIANTS: dict[str, dict] = {
    "dpo": {"loss": "dpo", "nll_weight": 0.0},
    "dpo-lr1e-4": {"loss": "dpo", "nll_weight": 0.0, "lr": 1e-4},
    "dpo-beta0.5": {"loss": "dpo", "nll_weight": 0.0, "beta": 0.5},
    "dpo+nll": {"loss": "dpo", "nll_weight": 1.0},
    "dpop": {"loss": "dpop", "nll_weight": 0.0, "dpop_lambda": 50.0},
    "dpop-l5": {"loss": "dpop", "nll_weight": 0.0, "dpop_lambda": 5.0},
    "rft": {"loss": "rft", "nll_weight": 0.0},
}
"""Each variant's changes to the quickstart's `training` section."""

PARTS = ("before", "first_diff", "after")
"""Where a chosen token lies relative to the first position where chosen and rejected differ."""


@dataclass(frozen=True)
class Probe:
    """The fixed pairs scored at every probe point, and the reference's per-token log-probs."""

    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    ref_chosen: list[torch.Tensor]
    ref_rejected: list[torch.Tensor]


@torch.no_grad()
def token_logps(
    model: PreTrainedModel, prompts: list[list[int]], responses: list[list[int]], pad_id: int
) -> list[torch.Tensor]:
    """log π(y_t | x, y_<t) of every response token, one float32 tensor [|y|] per response."""
    input_ids, attention_mask, response_mask = build_batch(prompts, responses, pad_id)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).logits[:, :-1]
    picked = logits.float().log_softmax(-1).gather(-1, input_ids[:, 1:, None])[..., 0]
    mask = response_mask[:, 1:]
    return [picked[i][mask[i]] for i in range(len(responses))]


def first_difference(chosen: list[int], rejected: list[int]) -> int:
    """The first position where the two responses' tokens differ (the shorter's length if one
    is a prefix of the other)."""
    for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)):
        if a != b:
            return i
    return min(len(chosen), len(rejected))


def probe_figures(model: PreTrainedModel, probe: Probe, pad_id: int) -> dict[str, float]:
    """Mean per-token log-probs of chosen and rejected under the policy and the reference, the
    summed margin h, and the chosen's log-prob change split by PARTS and by position."""
    chosen = token_logps(model, probe.prompts, probe.chosen, pad_id)
    rejected = token_logps(model, probe.prompts, probe.rejected, pad_id)
    n = len(chosen)
    out = {
        "chosen_tok": sum(float(c.mean()) for c in chosen) / n,
        "rejected_tok": sum(float(r.mean()) for r in rejected) / n,
        "ref_chosen_tok": sum(float(c.mean()) for c in probe.ref_chosen) / n,
        "ref_rejected_tok": sum(float(r.mean()) for r in probe.ref_rejected) / n,
    }
    margins, part_sum = [], dict.fromkeys(PARTS, 0.0)
    part_count, by_position = dict.fromkeys(PARTS, 0), {}
    for i in range(n):
        dw, dl = chosen[i] - probe.ref_chosen[i], rejected[i] - probe.ref_rejected[i]
        margins.append(float(dw.sum() - dl.sum()))
        d = first_difference(probe.chosen[i], probe.rejected[i])
        for t, delta in enumerate(dw.tolist()):
            part = PARTS[0] if t < d else PARTS[1] if t == d else PARTS[2]
            part_sum[part] += delta
            part_count[part] += 1
            by_position.setdefault(t, []).append(delta)
    out["margin"] = sum(margins) / n
    total = sum(part_sum.values())
    for part in PARTS:
        out[f"d_{part}_tok"] = part_sum[part] / max(part_count[part], 1)
        out[f"share_{part}"] = part_sum[part] / total if total else 0.0
    for t, deltas in sorted(by_position.items()):
        out[f"d_pos{t}"] = sum(deltas) / len(deltas)
    return out


def greedy_accuracy(model: PreTrainedModel, tokenizer: object, cfg: SelfplayConfig) -> float:
    """Greedy held-out accuracy of the in-memory model, as the evaluate stage computes it."""
    task = make_task(cfg.task, cfg.run.seed)
    prompts = task.heldout_prompts()
    backend = HFBackend(cfg.generation.prompts_per_batch, "cpu", "float32", cfg.model.chat_template)
    backend.attach(model, tokenizer)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.generation.max_new_tokens)
    samples = sample_once(backend, prompts, params, cfg.evaluation.batch_size)
    return sum(task.verify(p, y.text)[0] for p, y in zip(prompts, samples, strict=True)) / len(
        prompts
    )


def round_zero_pairs(base: dict, out: str) -> tuple[SelfplayConfig, str, list]:
    """Round 0's pairs of the quickstart (made once, reused on a re-run), its SFT policy's path."""
    data = yaml.safe_load(yaml.safe_dump(base))
    data["run"].update(name="displacement-pairs", output_dir=f"{out}/pairs")
    data["training"].update(max_steps=1)  # the pairs depend only on the SFT policy
    data.setdefault("guards", {})["heldout_samples"] = False
    cfg = parse_config(data, "round-0 pairs")
    run_loop(cfg, rounds=1)
    engine = make_engine(cfg.db_url)
    with session_factory(engine)() as s:
        run = queries.get_run(s, cfg.run.name)
        rnd = queries.get_round(s, run.id, 0)
        pairs = queries.training_pairs(s, rnd.id)
        sft_path = rnd.policy_checkpoint.path
    engine.dispose()
    return cfg, sft_path, pairs


def run_variant(
    name: str,
    base: dict,
    sft_path: str,
    examples: list[PairExample],
    probe: Probe,
    every: int,
    eval_at: set[int],
) -> list[dict[str, float]]:
    """Train a fresh SFT policy on the pairs with the variant's training section; the probe's
    figures (and greedy accuracy at `eval_at`) at step 0 and every `every` steps."""
    data = yaml.safe_load(yaml.safe_dump(base))
    data["training"].update(VARIANTS[name])
    cfg = parse_config(data, name)
    tokenizer = AutoTokenizer.from_pretrained(sft_path)
    pad_id = padding_id(tokenizer)
    model = load_trainable(sft_path, cfg.training, "cpu").eval()
    total = planned_steps(len(examples), cfg.training)
    log: list[dict[str, float]] = []

    def record(step: int, metrics: dict[str, float]) -> None:
        if step % every and step != total and step not in eval_at:
            return
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]):
            row = {"step": float(step), **probe_figures(model, probe, pad_id)}
            if step in eval_at or step == total:
                row["accuracy"] = greedy_accuracy(model, tokenizer, cfg)
        row.update({f"train_{k}": v for k, v in metrics.items() if k in ("loss", "grad_norm")})
        log.append(row)
        model.train(was_training)
        acc = f" acc {row['accuracy']:.3f}" if "accuracy" in row else ""
        print(
            f"{name} step {step}: chosen/tok {row['chosen_tok']:.3f} rejected/tok "
            f"{row['rejected_tok']:.3f} margin {row['margin']:.2f}{acc}",
            flush=True,
        )

    record(0, {})
    train_on_pairs(
        model, examples, cfg.training, pad_id, derive_seed(cfg.run.seed, 0), on_step=record
    )
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--variants", default="dpo,dpo-lr1e-4,dpop")
    parser.add_argument("--out", default="runs/displacement")
    parser.add_argument("--probe", type=int, default=256, help="pairs scored at each point")
    parser.add_argument("--every", type=int, default=25, help="probe every this many steps")
    parser.add_argument("--eval-at", default="0,50,150,300", help="steps with greedy accuracy")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    base = yaml.safe_load(Path(args.config).read_text())
    start = time.perf_counter()
    cfg, sft_path, pairs = round_zero_pairs(base, args.out)
    print(f"round 0: {len(pairs)} pairs in {time.perf_counter() - start:.0f}s", flush=True)

    tokenizer = AutoTokenizer.from_pretrained(sft_path)
    pad_id = padding_id(tokenizer)
    renderer = PromptRenderer(tokenizer, cfg.model.chat_template, sft_path)
    prompt_ids = renderer.ids_batch([pair_prompt(p) for p in pairs])
    reference = load_trainable(sft_path, cfg.training, "cpu").eval()
    ref_w, ref_l = [], []
    for i in range(0, len(pairs), 512):
        chunk = slice(i, i + 512)
        ref_w += token_logps(
            reference, prompt_ids[chunk], [p.chosen_token_ids for p in pairs[chunk]], pad_id
        )
        ref_l += token_logps(
            reference, prompt_ids[chunk], [p.rejected_token_ids for p in pairs[chunk]], pad_id
        )
    examples = [
        PairExample(ids, p.chosen_token_ids, p.rejected_token_ids, float(w.sum()), float(lo.sum()))
        for p, ids, w, lo in zip(pairs, prompt_ids, ref_w, ref_l, strict=True)
    ]
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))
    chosen_probe = order[: args.probe].tolist()
    probe = Probe(
        [prompt_ids[i] for i in chosen_probe],
        [pairs[i].chosen_token_ids for i in chosen_probe],
        [pairs[i].rejected_token_ids for i in chosen_probe],
        [ref_w[i] for i in chosen_probe],
        [ref_l[i] for i in chosen_probe],
    )
    eval_at = {int(s) for s in args.eval_at.split(",")}

    results: dict[str, dict] = {}
    for name in names:
        t0 = time.perf_counter()
        log = run_variant(name, base, sft_path, examples, probe, args.every, eval_at)
        results[name] = {"log": log, "seconds": time.perf_counter() - t0}

    print(f"\n{len(pairs)} pairs, probe of {len(chosen_probe)}; per-token log-probs (nats)\n")
    print(
        "| variant | step | chosen | rejected | margin h | Δ before | Δ first diff | Δ after "
        "| share of ΔS(y_w) before / first / after | accuracy |"
    )
    print("|---" * 10 + "|")
    for name, result in results.items():
        for row in result["log"]:
            acc = f"{row['accuracy']:.3f}" if "accuracy" in row else ""
            shares = " / ".join(f"{row[f'share_{p}']:.2f}" for p in PARTS)
            print(
                f"| {name} | {int(row['step'])} | {row['chosen_tok']:.3f} | "
                f"{row['rejected_tok']:.3f} | {row['margin']:.2f} | {row['d_before_tok']:.3f} | "
                f"{row['d_first_diff_tok']:.3f} | {row['d_after_tok']:.3f} | {shares} | {acc} |"
            )
    print("\nΔ log-prob of the chosen response's tokens by position, at the last step\n")
    positions = sorted({k for r in results.values() for k in r["log"][-1] if k.startswith("d_pos")})
    print("| variant | " + " | ".join(p.removeprefix("d_") for p in positions) + " | wall |")
    print("|---" * (len(positions) + 2) + "|")
    for name, result in results.items():
        last = result["log"][-1]
        cells = " | ".join(f"{last[p]:.3f}" if p in last else "—" for p in positions)
        print(f"| {name} | {cells} | {result['seconds']:.0f} s |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
