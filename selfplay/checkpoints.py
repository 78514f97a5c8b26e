"""The run's checkpoints on disk: where a round's is written, how (atomically), which one a
log-prob source names, and which directories `guards.keep_last` deletes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import Checkpoint, Round, RoundStatus

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SFT_ROUND_INDEX = -1  # the initial policy's checkpoint row
# Weights are written in safetensors shards of at most this (the Hub's convention: an 8B model
# in bf16 is 4 files, with model.safetensors.index.json naming each tensor's); transformers'
# own default shards only above 50 GB. A LoRA adapter is one file, whatever its size.
MAX_SHARD_SIZE = "5GB"


def round_checkpoint_dir(output_dir: Path, round_index: int) -> Path:
    """Where round `round_index`'s trained policy is written."""
    return output_dir.resolve() / "checkpoints" / f"round-{round_index:04d}"


def save_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    target: Path,
    dtype: torch.dtype | None = None,
) -> None:
    """Write a Hugging Face checkpoint atomically: into a temp dir, then rename.

    With `dtype`, the floating-point weights are written in it (config.json names it) while
    the model in memory keeps its own (the trainer's float32 masters); None: as they are. A
    model over MAX_SHARD_SIZE is written in shards (model-00001-of-0000N.safetensors, …). A
    LoRA adapter (a peft model) is written with its base's generation config, which peft leaves
    out: the engines serving adapters read the checkpoint's EOS ids from it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if dtype is None:
        model.save_pretrained(tmp, max_shard_size=MAX_SHARD_SIZE)
    else:
        # Tied weights (embeddings and lm_head) stay one tensor, so they are written once.
        cast: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
        state = {
            k: cast.setdefault((v.data_ptr(), tuple(v.shape)), v.to(dtype))
            if v.is_floating_point()
            else v
            for k, v in model.state_dict().items()
        }
        model.save_pretrained(tmp, state_dict=state, max_shard_size=MAX_SHARD_SIZE)
        # save_pretrained writes the dtype of the parameters in memory into config.json.
        config = json.loads((tmp / "config.json").read_text())
        config["dtype"] = str(dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if not (tmp / "generation_config.json").exists():
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def resolve_checkpoint(
    session: Session, run_id: int, rnd: Round, source: Literal["previous", "sft"]
) -> Checkpoint:
    """The checkpoint a log-prob source names: "previous" (π_t, the round's policy) or "sft"
    (the initial policy)."""
    if source == "previous":
        return rnd.policy_checkpoint
    sft = queries.get_checkpoint(session, run_id, SFT_ROUND_INDEX)
    assert sft is not None, "the initial checkpoint row is created before any round"
    return sft


def prune_checkpoints(
    sessions: sessionmaker[Session], run_id: int, keep_last: int | None
) -> list[str]:
    """guards.keep_last: delete the run's checkpoint directories other than the SFT model's,
    the best one, the last `keep_last` rounds' and any an unfinished round still needs;
    returns deleted paths (none when `keep_last` is None). The rows stay (their metrics and
    accuracies remain queryable)."""
    if keep_last is None:
        return []
    with sessions() as s:
        ckpts = s.scalars(
            select(Checkpoint)
            .where(Checkpoint.run_id == run_id, Checkpoint.round_index >= 0)
            .order_by(Checkpoint.round_index)
        ).all()
        best = queries.best_checkpoint(s, run_id)
        needed = set(
            s.scalars(
                select(Round.policy_checkpoint_id).where(
                    Round.run_id == run_id, Round.status != RoundStatus.DONE
                )
            )
        )
        keep = {c.id for c in ckpts[-keep_last:]} | needed | ({best.id} if best else set())
        doomed = [c.path for c in ckpts if c.id not in keep]
    deleted = []
    for path in doomed:
        if Path(path).exists():
            shutil.rmtree(path)
            deleted.append(path)
    return deleted
