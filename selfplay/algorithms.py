"""The algorithm registry: what each loss and pair builder needs, and the round-procedure presets.

Import-free (no torch, no config): the config validates against it, the stages read which
log-probs a loss needs from it, and `selfplay.training.losses` / `selfplay.pairing` map the same
names to their functions. ALGORITHMS.md gives the math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Reference = Literal["config", "previous", "sft"]


@dataclass(frozen=True)
class LossSpec:
    """What a loss needs besides the policy's and the reference's log-probs of its pairs.

    - `reference`: where `PairLogps.ref_*` come from: "config" (training.reference decides),
      "previous" (the round's starting policy π_t) or "sft" (the fixed initial model); None for
      losses that use no reference (simpo, rft).
    - `needs_prev`: the round's starting policy's log-probs as a third source (INPO).
    - `needs_targets`: win-probability targets on its pairs, made by a builder with
      `BuilderSpec.makes_targets` (SPPO).
    - `needs_ref_sample`: pairs of a policy sample and a reference sample, made by a builder with
      `BuilderSpec.pairs_ref_samples` (XPO).
    """

    reference: Reference | None = "config"
    needs_prev: bool = False
    needs_targets: bool = False
    needs_ref_sample: bool = False


@dataclass(frozen=True)
class BuilderSpec:
    """What a pair builder's pairs carry.

    - `makes_targets`: each pair carries the responses' win probabilities (SPPO's P̂); such
      pairs are meant for a loss with `LossSpec.needs_targets`.
    - `pairs_ref_samples`: each pair is a policy sample against a sample of the reference model
      (generation.reference_samples ≥ 1 provides them).
    """

    makes_targets: bool = False
    pairs_ref_samples: bool = False


LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(),
    "cdpo": LossSpec(),
    "rdpo": LossSpec(),
    "ipo": LossSpec(),
    "simpo": LossSpec(reference=None),
    "chipo": LossSpec(),
    "dpop": LossSpec(),
    "dno": LossSpec(reference="previous"),
    "inpo": LossSpec(reference="sft", needs_prev=True),
    "sppo": LossSpec(reference="previous", needs_targets=True),
    "xpo": LossSpec(reference="sft", needs_ref_sample=True),
    "rft": LossSpec(reference=None),
}

BUILDERS: dict[str, BuilderSpec] = {
    "max_min": BuilderSpec(),
    "max_random": BuilderSpec(),
    "self_rewarding": BuilderSpec(),
    "dno": BuilderSpec(),
    "inpo": BuilderSpec(),
    "sppo": BuilderSpec(makes_targets=True),
    "xpo": BuilderSpec(pairs_ref_samples=True),
}
"""The selectable pair builders (pairing.builder); "revise" pairs are added by the revising stage
and are not selectable."""


def combination_errors(
    loss: str, builder: str, *, reference_samples: int, revise: bool
) -> list[str]:
    """Why a loss, a pair builder, the reference-sample count and revising do not fit together;
    empty when they do. `loss` and `builder` are registry names."""
    spec, pairs = LOSSES[loss], BUILDERS[builder]
    errors = []
    if spec.needs_targets and not pairs.makes_targets:
        errors.append(f"loss {loss} needs win-probability targets: use pairing.builder 'sppo'")
    if spec.needs_ref_sample and not pairs.pairs_ref_samples:
        errors.append(f"loss {loss} needs policy-vs-reference pairs: use pairing.builder 'xpo'")
    if pairs.makes_targets and not spec.needs_targets:
        errors.append(f"pairing.builder '{builder}' makes win-probability targets: use loss sppo")
    if pairs.pairs_ref_samples and reference_samples < 1:
        errors.append(
            f"generation.reference_samples must be >= 1 for the {builder} builder "
            "(it pairs policy samples with reference samples)"
        )
    if revise and pairs.makes_targets:
        errors.append(
            f"revise.enabled does not combine with the {builder} builder: its loss needs "
            "win-probability targets that revise pairs do not have"
        )
    if revise and pairs.pairs_ref_samples:
        errors.append(
            f"revise.enabled does not combine with the {builder} builder: its pairs are policy "
            "vs reference samples, and a revision is neither"
        )
    return errors


# Round procedures (ALGORITHMS.md): the loss, its reference, the pair builder and the paper's
# hyper-parameters, as config sections. A config value always wins over the preset's.
ALGORITHM_PRESETS: dict[str, dict] = {
    "dpo": {"training": {"loss": "dpo"}},
    "dpo+nll": {"training": {"loss": "dpo", "nll_weight": 1.0}},
    "iterative_dpo": {
        "training": {"loss": "dpo", "reference": "previous"},
        "pairing": {"builder": "max_min", "max_pairs_per_prompt": 1},
    },
    "cdpo": {"training": {"loss": "cdpo", "epsilon": 0.1}},
    "rdpo": {"training": {"loss": "rdpo", "epsilon": 0.1}},
    "ipo": {"training": {"loss": "ipo", "ipo_tau": 0.1}},
    "simpo": {"training": {"loss": "simpo", "beta": 2.0, "simpo_gamma_ratio": 0.5}},
    "chipo": {"training": {"loss": "chipo", "beta": 0.05, "chipo_r": 10.0}},
    "dpop": {"training": {"loss": "dpop", "dpop_lambda": 50.0}},
    "rft": {"training": {"loss": "rft"}},
    "dno": {
        "training": {"loss": "dno", "beta": 0.1, "reference": "previous"},
        "pairing": {"builder": "dno", "dno_margin": 0.25},
    },
    "inpo": {
        "training": {"loss": "inpo", "inpo_eta": 0.005, "reference": "sft"},
        "pairing": {"builder": "inpo", "max_pairs_per_prompt": 1},
    },
    "sppo": {
        "training": {"loss": "sppo", "sppo_eta": 1000.0, "reference": "previous"},
        "pairing": {"builder": "sppo", "max_pairs_per_prompt": 1},
    },
    "xpo": {
        "training": {"loss": "xpo", "beta": 0.1, "xpo_alpha": 1e-5, "reference": "sft"},
        "pairing": {"builder": "xpo"},
        "generation": {"reference_samples": 4, "samples_per_prompt": 4},
    },
    "self_rewarding": {
        "training": {"loss": "dpo", "beta": 0.1, "reference": "previous"},
        "pairing": {"builder": "self_rewarding", "max_pairs_per_prompt": 1},
        "judge": {"name": "self", "repeats": 3},
    },
}
