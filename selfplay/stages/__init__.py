"""The stages of a round, one module each: generate, judge, revise, pair, train, evaluate.

Each step computes its missing work from the store, does it in chunks and commits each chunk,
so a step killed at any point and run again finishes the same work with no duplicate rows
(unique keys make a repeated insert a no-op). Stages never call each other: the driver's
recipe (`selfplay.driver.round_recipe`) says which steps run in what order, and an executor
runs each one, in this process or as Celery tasks. `STEPS` names them for the executors.
"""

from __future__ import annotations

from collections.abc import Callable

from selfplay.stages.context import Context, Engines
from selfplay.stages.evaluate import evaluate_round
from selfplay.stages.generate import generate_round, insert_prompts
from selfplay.stages.judge import judge_round, store_judge_eval
from selfplay.stages.pair import pair_round
from selfplay.stages.revise import revise_round
from selfplay.stages.train import train_round

StepFn = Callable[[Context, int], None]

STEPS: dict[str, StepFn] = {
    "prompts": insert_prompts,
    "generate": generate_round,
    "judge": judge_round,
    "revise": revise_round,
    "judge_eval": store_judge_eval,
    "pair": pair_round,
    "train": train_round,
    "evaluate": evaluate_round,
}

__all__ = ["STEPS", "Context", "Engines", "StepFn"]
