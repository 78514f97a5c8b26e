"""Training and scoring over N ranks on this node (`training.distributed`: DDP or FSDP2).

The train stage writes a job into a directory of the run, launches `torch.distributed.run`
with this module as each rank's program (torchrun's environment contract: RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT, from a standalone rendezvous on a free port) and waits, reading
the JSONL file rank 0 appends to as its lines come.

- A training job (`Job`: policy, pairs, training config, seed, target): each rank loads the
  policy, wraps it (DistributedDataParallel, or `fully_shard` per decoder layer and the root),
  and runs `train_on_pairs` on its slice of every micro-batch; rank 0 writes each step's
  metrics, and at the end gathers the full state dict and saves the checkpoint atomically with
  `save_checkpoint`.
- A scoring job (`ScoreJob`: a checkpoint and the responses to score under it, the reference
  or π_t log-probs the loss needs): each rank loads the checkpoint whole as a `Scorer` and
  scores its slice `[rank::N]` of every chunk; rank 0 gathers the chunk's values and writes
  them, in the job's order.

A rank that raises writes its traceback next to the job; the stage raises RankFailure with it,
or with torchrun's log when a rank was killed.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel

from selfplay.adapters import adapter_base, is_adapter
from selfplay.faults import commit_point
from selfplay.scoring import Scorer
from selfplay.tasks.base import Prompt
from selfplay.training.config import TrainingConfig
from selfplay.training.trainer import (
    PairExample,
    load_trainable,
    save_trained,
    train_on_pairs,
    with_lora,
)

JOB_FILE = "job.json"
METRICS_FILE = "metrics.jsonl"
LOGPROBS_FILE = "logprobs.jsonl"
LOG_FILE = "torchrun.log"
POLL_S = 0.2
LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1


class RankFailure(RuntimeError):
    """A training rank died: the message holds its traceback, or torchrun's account of it."""


@dataclass(frozen=True)
class Job:
    """What every rank of one round's training is given."""

    policy_path: str
    pairs: list[PairExample]
    cfg: TrainingConfig
    pad_id: int
    seed: int
    target: str
    save_dtype: str | None = None  # a torch dtype's name: the checkpoint's weights in it


@dataclass(frozen=True)
class ScoreJob:
    """What every rank of one distributed scoring is given: responses to score under a
    checkpoint (as `Scorer(checkpoint_path, dtype, chat_template)` scores them), each after its
    prompt as a `prompts` row stores it (text, JSON messages or None), in chunks of `chunk`."""

    checkpoint_path: str
    dtype: str
    chat_template: str
    prompts: list[tuple[str, list[dict] | None]]
    responses: list[list[int]]
    nproc: int
    chunk: int


def round_job_dir(output_dir: Path, round_index: int) -> Path:
    """Where round `round_index`'s distributed training keeps its job, metrics and log."""
    return output_dir.resolve() / "distributed" / f"round-{round_index:04d}"


def score_job_dir(output_dir: Path, round_index: int, checkpoint_id: int) -> Path:
    """Where round `round_index`'s distributed scoring under checkpoint `checkpoint_id` keeps
    its job, log-probs and log."""
    return round_job_dir(output_dir, round_index).with_name(
        f"round-{round_index:04d}-logprobs-{checkpoint_id}"
    )


def train_distributed(
    job: Job, job_dir: Path, on_step: Callable[[int, dict[str, float]], None] | None = None
) -> None:
    """Train `job` on `job.cfg.distributed.nproc` ranks and save its checkpoint at `job.target`.

    Blocks until the ranks exit; `on_step(step, metrics)` is called here, in this process, for
    each step rank 0 reports (the same metrics as train_on_pairs's). `job_dir` is emptied first
    and removed on success; it keeps the job, the metrics and torchrun's log of a failure.
    Raises RankFailure when a rank fails (nothing is saved at `job.target` then).
    """
    data = {"kind": "train"} | asdict(job) | {"cfg": job.cfg.model_dump(mode="json")}

    def deliver(record: dict) -> None:
        if on_step is not None:
            on_step(record["step"], record["metrics"])

    _run_ranks(data, job.cfg.distributed.nproc, job_dir, METRICS_FILE, deliver)


def score_distributed(
    job: ScoreJob, job_dir: Path, on_chunk: Callable[[int, list[float]], None]
) -> None:
    """Score `job.responses` on `job.nproc` ranks: log π(response | prompt) under the job's
    checkpoint, what `Scorer.score` returns for them in one process (within float32 rounding:
    the batches differ).

    Blocks until the ranks exit; `on_chunk(start, values)` is called here, in this process, as
    each chunk is scored: the values of responses `start`, `start + 1`, … in order, so chunks
    delivered before a rank fails can be kept. `job_dir` is handled as `train_distributed`'s;
    raises RankFailure when a rank fails.
    """
    data = {"kind": "score"} | asdict(job)
    _run_ranks(data, job.nproc, job_dir, LOGPROBS_FILE, lambda r: on_chunk(r["start"], r["values"]))


def _run_ranks(
    data: dict, nproc: int, job_dir: Path, output: str, deliver: Callable[[dict], None]
) -> None:
    """Launch `nproc` ranks on the job `data` (written to `job_dir`), `deliver` each record
    rank 0 appends to `job_dir / output` as it comes, and raise RankFailure if a rank fails
    (before any is launched when this node has fewer GPUs than ranks)."""
    problem = gpu_shortfall(nproc)
    if problem is not None:
        raise RankFailure(problem)
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    _write_job(data, job_dir / JOB_FILE)
    # The ranks are other processes: hand them the GPU memory this one's allocator caches but
    # does not use (the hf backend's growing KV caches left 110 of 139 GiB reserved on an H200
    # with 18 GiB in use: BENCHMARKS.md, "One chat round on a GPU"). A no-op before CUDA is used.
    torch.cuda.empty_cache()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        "-m",
        __name__,
        str(job_dir),
    ]
    records = _RecordReader(job_dir / output)
    with open(job_dir / LOG_FILE, "wb") as log:
        launcher = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        try:
            while launcher.poll() is None:
                records.deliver(deliver)
                time.sleep(POLL_S)
        finally:
            if launcher.poll() is None:  # this process is being interrupted
                launcher.terminate()
                launcher.wait()
    records.deliver(deliver)
    if launcher.returncode != 0:
        raise RankFailure(_failure(job_dir, data["kind"], launcher.returncode))
    shutil.rmtree(job_dir)


def gpu_shortfall(nproc: int) -> str | None:
    """Why `nproc` ranks, one per GPU, cannot run on this node's visible GPUs (rank k >= their
    count would fail at `torch.cuda.set_device`, "invalid device ordinal", on every re-run);
    None when they fit, or when there is no CUDA (the ranks run on the CPU)."""
    if not torch.cuda.is_available() or nproc <= torch.cuda.device_count():
        return None
    gpus = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    return (
        f"training.distributed.nproc is {nproc} but this node has {gpus} visible GPU(s){shown};"
        f" each rank needs its own GPU: set nproc to at most {gpus}"
    )


def _write_job(data: dict, path: Path) -> None:
    """The job as JSON, written atomically (a rank never reads half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_job(path: Path) -> Job | ScoreJob:
    data = json.loads(path.read_text())
    if data.pop("kind") == "score":
        return ScoreJob(**data)
    data["pairs"] = [PairExample(**p) for p in data["pairs"]]
    data["cfg"] = TrainingConfig.model_validate(data["cfg"])
    return Job(**data)


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the launcher, before exec: SIGTERM it when the stage's process dies (even SIGKILLed),
    and torchrun stops its ranks, so no orphan keeps training or writing the checkpoint. (The
    signal follows the thread that started it: the stage's main thread, in the driver and in a
    solo or prefork Celery worker.)"""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _RecordReader:
    """Follows rank 0's JSONL output: each complete line once, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def deliver(self, handle: Callable[[dict], None]) -> None:
        """Pass each line completed since the last call to `handle`, parsed."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            handle(json.loads(line))


def _failure(job_dir: Path, kind: str, returncode: int) -> str:
    """torchrun's account of the failure (which rank failed first, its exit code or signal),
    then the traceback of each rank that raised (a rank killed by a signal leaves none; the
    others often raise on the broken connection)."""
    log = (job_dir / LOG_FILE).read_text(errors="replace")
    start = log.rfind("Root Cause")
    account = log[start:] if start >= 0 else "\n".join(log.splitlines()[-LOG_TAIL_LINES:])
    what = "training" if kind == "train" else "scoring"
    parts = [f"{what} failed (torchrun exit {returncode}; {job_dir / LOG_FILE}):\n{account}"]
    for error in sorted(job_dir.glob("rank-*.error")):
        parts.append(f"{error.stem} raised:\n{error.read_text()}")
    return "\n".join(parts)


class _DataParallel(DistributedDataParallel):
    """DistributedDataParallel that answers attributes it lacks from the wrapped model (its
    config), so the trainer reads the policy's settings through the wrapper."""

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(model: PreTrainedModel, cfg: TrainingConfig, device: torch.device) -> torch.nn.Module:
    """The model made data-parallel over the process group by `cfg.distributed.strategy`.

    ddp: each rank holds the whole model, gradients are all-reduced. fsdp: FSDP2,
    `fully_shard` on each decoder layer and then the root (embeddings, final norm, head), so
    parameters, gradients and the optimizer state are sharded over the ranks and each layer's
    parameters are gathered only around its forward and backward; on a GPU with `cfg.bf16`
    they are gathered in bf16 and gradients reduced in float32 (float32 masters are what the
    optimizer steps), on a CPU everything is float32.
    """
    if cfg.distributed.strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return _DataParallel(model, device_ids=ids)
    if device.type == "cuda" and cfg.bf16:
        precision = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        precision = MixedPrecisionPolicy()
    for layer in model.get_decoder().layers:
        fully_shard(layer, mp_policy=precision)
    fully_shard(model, mp_policy=precision)
    return model


def _save(model: torch.nn.Module, job: Job, rank: int) -> None:
    """Gather the trained weights to rank 0 (on its CPU) and save them there as the checkpoint,
    as the single-device path saves it (`save_trained`: LoRA adapters alone or merged).

    The gathered tensors become the weights of an empty frame of the policy (built on the meta
    device), so rank 0 holds one full copy, not two. The frame takes the policy's own
    generation config (its EOS ids: an instruct model's may be several, where config.json
    names one), as `from_pretrained` gives the single path's model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model.zero_grad(set_to_none=True)
    state = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if rank == 0:
        base = adapter_base(job.policy_path) if is_adapter(job.policy_path) else job.policy_path
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
        try:
            plain.generation_config = GenerationConfig.from_pretrained(base)
        except OSError:  # none saved: the one derived from config.json, as from_pretrained's
            pass
        if job.cfg.lora is not None:
            plain = with_lora(plain, job.cfg)
            plain.peft_config["default"].base_model_name_or_path = base
        plain.load_state_dict(state, assign=True)
        tokenizer = AutoTokenizer.from_pretrained(job.policy_path)
        dtype = getattr(torch, job.save_dtype) if job.save_dtype is not None else None
        save_trained(plain, job.cfg, tokenizer, Path(job.target), dtype)
    dist.barrier()


def _score(job: ScoreJob, job_dir: Path, rank: int, world: int) -> None:
    """This rank's slice `[rank::world]` of each chunk scored, rank 0 writing the chunk's
    values, gathered from every rank, as one line in the job's order."""
    scorer = Scorer(job.checkpoint_path, job.dtype, job.chat_template)
    out = open(job_dir / LOGPROBS_FILE, "a") if rank == 0 else None
    for start in range(0, len(job.responses), job.chunk):
        mine = range(start + rank, min(start + job.chunk, len(job.responses)), world)
        values = (
            scorer.score(
                [Prompt.from_row(job.prompts[i][0], None, job.prompts[i][1]) for i in mine],
                [job.responses[i] for i in mine],
            )
            if mine
            else []
        )
        gathered: list[list[float]] = [[] for _ in range(world)]
        dist.all_gather_object(gathered, values)
        if out is not None:
            # response start + k*world + r is rank r's k-th; rank 0 has the most
            chunk = [
                gathered[r][k]
                for k in range(len(gathered[0]))
                for r in range(world)
                if k < len(gathered[r])
            ]
            out.write(json.dumps({"start": start, "values": chunk}) + "\n")
            out.flush()
        # SELFPLAY_KILL_AT=score-rank<r>:<n> kills rank r after its n-th chunk.
        commit_point(f"score-rank{rank}")
    if out is not None:
        out.close()


def _train(job: Job, job_dir: Path, device: torch.device, rank: int, world: int) -> None:
    """This rank's part of the training, then of the checkpoint's save."""
    # fsdp: loaded into CPU memory; fully_shard moves each layer to the device as it shards
    # it, so no GPU ever holds the whole float32 model.
    load_on = "cpu" if job.cfg.distributed.strategy == "fsdp" else str(device)
    model = wrap(load_trainable(job.policy_path, job.cfg, load_on), job.cfg, device)
    metrics = open(job_dir / METRICS_FILE, "a") if rank == 0 else None

    def on_step(step: int, values: dict[str, float]) -> None:
        if metrics is not None:
            metrics.write(json.dumps({"step": step, "metrics": values}) + "\n")
            metrics.flush()
        # SELFPLAY_KILL_AT=train-rank<r>:<n> kills rank r after its n-th step.
        commit_point(f"train-rank{rank}")

    train_on_pairs(model, job.pairs, job.cfg, job.pad_id, job.seed, on_step, rank, world)
    if metrics is not None:
        metrics.close()
    _save(model, job, rank)


def _rank_main(job_dir: Path) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)  # the Scorer's "cuda" is this rank's GPU
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    try:
        job = _read_job(job_dir / JOB_FILE)
        if isinstance(job, ScoreJob):
            _score(job, job_dir, rank, world)
        else:
            _train(job, job_dir, device, rank, world)
    finally:
        dist.destroy_process_group()


def main() -> None:
    """A rank's program: `python -m selfplay.training.distributed JOB_DIR` under torchrun."""
    job_dir = Path(sys.argv[1])
    try:
        _rank_main(job_dir)
    except BaseException:
        (job_dir / f"rank-{os.environ['RANK']}.error").write_text(traceback.format_exc())
        raise
    # Done (and saved): leave without the interpreter's teardown, where a communication thread
    # destroyed after the process group can abort the rank ("terminate called without an
    # active exception", seen with gloo) and so fail a round whose checkpoint is written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
