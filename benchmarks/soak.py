"""Random-kill soak: real SIGKILLs of `selfplay run` (and of a distributed run's driver, workers
and Redis) at random times, each resumed, then the store compared with an uninterrupted run.

    python benchmarks/soak.py [--kills N] [--distributed-kills N] [--seed S] [--skip-distributed]

No fault hook (SELFPLAY_KILL_AT is removed from every child's environment): each kill is
`os.killpg(pgid, SIGKILL)` of a process group from outside, at a uniformly random time.

The config is configs/quickstart.yaml reduced (2 rounds, 256 prompts a round in blocks of 32,
200 held-out prompts, ≤ 60 training steps, SFT capped at 800 steps); SELFPLAY_CACHE_DIR (a
fresh directory when unset) is shared by every run, so the SFT model is built once, during the
first reference run, and its seconds are left out of the reference's wall time.

Embedded pass (SQLite): an uninterrupted reference run gives the wall time T. A trial is a
fresh store; each attempt runs `python -m selfplay run CONFIG` in a process group of its own
and SIGKILLs the group at t ~ U(0, T) after its start, unless it exits first; a killed attempt
is followed by the same command again. An attempt that exits before its kill time ends the
trial; a new trial starts while fewer than N kills have happened. After the N-th kill the trial
is finished uninterrupted. Every trial's store is then compared with the reference's. On a
shared box the same run's wall time moves several-fold with the other jobs' load, so T is
replaced by the wall time of any later trial that ran whole before its kill (the same in the
distributed pass: a trial that finished before its first event sets T_d).

Distributed pass (PostgreSQL schema per run, a redis-server of the script's own on a free port
with appendonly and fsync always, one `selfplay worker` per queue: generate, judge, train): an
uninterrupted distributed reference (time T_d), then trials on fresh schemas whose events come
each U(0, T_d) after the previous one (or the trial's start): SIGKILL of the driver (rerun at
once), of a worker's process group (restarted at once; a task it held unacknowledged is
redelivered after executor.visibility_timeout_s) and one Redis restart (SIGKILL, then the same
port and directory). The events are the driver and each worker once in a random order, more
picked at random up to --distributed-kills, and the Redis restart at a random place among them.
Events left when the driver finishes go to the next trial. The distributed reference is also
compared with the embedded one (the modes are expected equal row for row).

Comparison, by content on natural keys (no ids, timestamps or wall times): prompts (round,
index, text, answer); responses (round, prompt index, sample index, text, token ids, tokens,
log-prob, finish reason, generating checkpoint's round, revised response); judgments
(response key, judge, repeat, status, score, critique, trace, error, tokens, cost: not
latency); pairs (round, prompt index, builder, chosen and rejected keys, scores, margin,
weight, targets); response log-probs (response key, checkpoint round, value); checkpoints
(round, held-out accuracy) and their weight files (sha256); rounds (index, status, error,
held-out accuracy, policy and output checkpoint rounds: not wall time or finish time); round
summaries (every aggregate); metrics (round, stage, step, name, value) except timings (name
`seconds`, the `task_*` stages' per-task wall times, and any name that reads as a time); the
run's config without the fields that differ by construction (output_dir, store, executor).

Prints a progress line per attempt and event, then markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.workers.processes import Cluster, OwnRedis, clean_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN_NAME = "soak"
QUEUES = ("generate", "judge", "train")  # workers/app.py QUEUES
LOAD = os.getloadavg()
# A metric whose name reads as a time is a measurement of this machine, not of the run.
TIMING = re.compile(r"(^seconds$|_seconds$|_s$|time|latency|per_s|throughput|tokens_per)")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------ config


def reduced_config(args: argparse.Namespace) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg["run"].update(name=RUN_NAME, rounds=args.rounds)
    cfg["task"].update(prompts_per_round=args.prompts_per_round, heldout_size=args.heldout_size)
    cfg["generation"]["prompts_per_batch"] = args.prompts_per_batch
    cfg["training"]["max_steps"] = args.max_steps
    cfg["model"]["sft"] = {"steps": args.sft_steps, "target_accuracy": None}
    return cfg


def write_config(base: dict, path: Path, output_dir: Path, **sections: dict) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(base))
    cfg["run"]["output_dir"] = str(output_dir)
    cfg.update(sections)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- the store


def engine_for(url: str):  # noqa: ANN201 - an Engine; NullPool: nothing held between calls
    """An engine on `url`; a SQLite store is opened read-only (never created by a probe: the run
    creates its own, with its own permissions). FileNotFoundError when it does not exist yet."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise FileNotFoundError(path)
        url = f"sqlite:///file:{path}?mode=ro&uri=true"
    return create_engine(url, poolclass=NullPool)


def _json(value: object) -> object:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _frozen(value: object) -> object:
    """A hashable, order-stable form of a JSON value."""
    value = _json(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return value


def snapshot(url: str) -> dict[str, Counter]:
    """The run's rows by content on natural keys, a multiset of tuples per table."""
    engine = engine_for(url)
    out: dict[str, Counter] = {}
    with engine.connect() as c:

        def q(sql: str) -> list:
            return list(c.execute(text(sql), {"run": RUN_NAME}))

        (run_id, config) = q("SELECT id, config FROM runs WHERE name = :run")[0]
        config = dict(_json(config))
        for volatile in ("store", "executor"):
            config.pop(volatile, None)
        config["run"] = {k: v for k, v in config["run"].items() if k != "output_dir"}
        config["model"] = {k: v for k, v in config["model"].items() if k != "cache_dir"}
        out["run config"] = Counter([json.dumps(config, sort_keys=True)])

        ckpt_round = dict(q(f"SELECT id, round_index FROM checkpoints WHERE run_id = {run_id}"))
        out["checkpoints"] = Counter(
            q(f"SELECT round_index, heldout_accuracy FROM checkpoints WHERE run_id = {run_id}")
        )
        weights = Counter()
        for index, path in q(f"SELECT round_index, path FROM checkpoints WHERE run_id = {run_id}"):
            files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
            for f in files:
                weights[(index, f.name, hashlib.sha256(f.read_bytes()).hexdigest())] += 1
        out["checkpoint weights"] = weights

        rounds = q(
            'SELECT id, "index", status, error, heldout_accuracy, policy_checkpoint_id, '
            f"output_checkpoint_id FROM rounds WHERE run_id = {run_id}"
        )
        round_index = {r[0]: r[1] for r in rounds}
        out["rounds"] = Counter(
            (r[1], r[2], r[3], r[4], ckpt_round.get(r[5]), ckpt_round.get(r[6])) for r in rounds
        )
        rids = ",".join(str(r) for r in round_index) or "NULL"

        prompts = q(
            f'SELECT id, round_id, "index", text, answer FROM prompts WHERE round_id IN ({rids})'
        )
        prompt_key = {p[0]: (round_index[p[1]], p[2]) for p in prompts}
        out["prompts"] = Counter((*prompt_key[p[0]], p[3], p[4]) for p in prompts)

        responses = q(
            "SELECT id, prompt_id, sample_index, text, token_ids, num_tokens, logprob, "
            f"finish_reason, checkpoint_id, revises_id FROM responses WHERE round_id IN ({rids})"
        )
        resp_key = {r[0]: (*prompt_key[r[1]], r[2]) for r in responses}
        out["responses"] = Counter(
            (
                *resp_key[r[0]],
                r[3],
                tuple(_json(r[4])),
                r[5],
                r[6],
                r[7],
                ckpt_round.get(r[8]),
                resp_key.get(r[9]),
            )
            for r in responses
        )
        rsp = f"SELECT id FROM responses WHERE round_id IN ({rids})"
        out["judgments"] = Counter(
            (resp_key[j[0]], j[1], j[2], j[3], j[4], j[5], _frozen(j[6]), j[7], j[8], j[9])
            for j in q(
                "SELECT response_id, judge, repeat, status, score, critique, trace, error, "
                f"tokens, cost FROM judgments WHERE response_id IN ({rsp})"
            )
        )
        out["pairs"] = Counter(
            (round_index[p[0]], prompt_key[p[1]][1], p[2], resp_key[p[3]], resp_key[p[4]], *p[5:])
            for p in q(
                "SELECT round_id, prompt_id, builder, chosen_id, rejected_id, chosen_score, "
                "rejected_score, margin, weight, chosen_target, rejected_target "
                f"FROM pairs WHERE round_id IN ({rids})"
            )
        )
        out["response log-probs"] = Counter(
            (resp_key[r[0]], ckpt_round.get(r[1]), r[2])
            for r in q(
                "SELECT response_id, checkpoint_id, logprob FROM response_logprobs "
                f"WHERE response_id IN ({rsp})"
            )
        )
        summary_cols = [
            col["name"]
            for col in inspect(c).get_columns("round_summaries")
            if col["name"] not in ("id", "round_id", "created_at")
        ]
        cols = ", ".join(f'"{name}"' for name in summary_cols)
        out["round summaries"] = Counter(
            (round_index[s[0]], *(_frozen(v) for v in s[1:]))
            for s in q(f"SELECT round_id, {cols} FROM round_summaries WHERE round_id IN ({rids})")
        )
        metrics = q(
            f"SELECT round_index, stage, step, name, value FROM metrics WHERE run_id = {run_id}"
        )
        out["metrics"] = Counter(m for m in metrics if not is_timing(m[1], m[3]))
        out["_timing metrics"] = Counter((m[1], m[3]) for m in metrics if is_timing(m[1], m[3]))
    engine.dispose()
    return out


def is_timing(stage: str, name: str) -> bool:
    return stage.startswith("task_") or bool(TIMING.search(name))


def progress(url: str) -> tuple[str, str]:
    """Where the run is, read from its store: (stage, description). The stage is `startup`
    before the first round row (imports, migration, loading the SFT model, its evaluation),
    else the last round's status."""
    try:
        engine = engine_for(url)
    except FileNotFoundError:
        return "startup", "no store yet"
    try:
        if not inspect(engine).has_table("rounds"):
            return "startup", "no tables yet"
        with engine.connect() as c:
            rows = list(
                c.execute(
                    text(
                        'SELECT r.id, r."index", r.status FROM rounds r JOIN runs u '
                        'ON u.id = r.run_id WHERE u.name = :run ORDER BY r."index"'
                    ),
                    {"run": RUN_NAME},
                )
            )
            if not rows:
                return "startup", "no round yet"
            rid, index, status = rows[-1]
            counts = [
                c.execute(text(f"SELECT count(*) FROM {table} WHERE round_id = {rid}")).scalar()
                for table in ("responses", "pairs")
            ]
            judged = c.execute(
                text(
                    "SELECT count(*) FROM judgments WHERE response_id IN "
                    f"(SELECT id FROM responses WHERE round_id = {rid})"
                )
            ).scalar()
            return status, (
                f"round {index} {status}: {counts[0]} responses, {judged} judgments, "
                f"{counts[1]} pairs"
            )
    except Exception as e:  # noqa: BLE001 - a diagnostic line, never fatal
        return "unknown", f"store unreadable ({type(e).__name__}: {e})"
    finally:
        engine.dispose()


def compare(reference: dict[str, Counter], other: dict[str, Counter]) -> dict[str, str]:
    """Per table: 'equal', or what differs (counts and the first differing rows)."""
    result = {}
    for table in reference:
        if table.startswith("_"):
            continue
        a, b = reference[table], other.get(table, Counter())
        if a == b:
            result[table] = "equal"
            continue
        missing, extra = a - b, b - a
        sample = (
            ", ".join(f"-{row!r:.200}" for row in list(missing)[:2])
            + "; "
            + ", ".join(f"+{row!r:.200}" for row in list(extra)[:2])
        )
        result[table] = (
            f"DIFFERENT: reference {sum(a.values())} rows, this {sum(b.values())}; "
            f"{sum(missing.values())} only in the reference, {sum(extra.values())} only here "
            f"({sample})"
        )
    return result


def rows(snap: dict[str, Counter]) -> dict[str, int]:
    return {t: sum(c.values()) for t, c in snap.items() if not t.startswith("_")}


# ------------------------------------------------------------------------------ processes


def selfplay_run(config: Path, logfile: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "selfplay", "run", str(config)],
        env=clean_env(),
        stdout=open(logfile, "w"),  # noqa: SIM115 - closed by the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


TASK_LINE = re.compile(r"Task (selfplay\.\w+)\[([0-9a-f-]+)\] (\w+)")


def running_tasks(worker_log: Path) -> list[str]:
    """The tasks a worker had received and not finished (its log), e.g. ['selfplay.train']."""
    open_tasks: dict[str, str] = {}
    for name, task_id, verb in TASK_LINE.findall(worker_log.read_text(errors="replace")):
        if verb == "received":
            open_tasks[task_id] = name
        else:  # succeeded, failed, raised, retry, ...
            open_tasks.pop(task_id, None)
    return sorted(open_tasks.values())


def tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def wait_or_kill(proc: subprocess.Popen, kill_at: float | None, limit: float) -> tuple[str, float]:
    """('exited'|'killed'|'hung', seconds): SIGKILL its group at kill_at (or at limit: hung)."""
    start = time.monotonic()
    deadline = start + (kill_at if kill_at is not None else limit)
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            kill_group(proc)
            return ("killed" if kill_at is not None else "hung"), time.monotonic() - start
        time.sleep(0.05)
    return "exited", time.monotonic() - start


@dataclass
class Trial:
    name: str
    url: str
    kills: list[str] = field(default_factory=list)  # one line per kill/event
    failures: list[str] = field(default_factory=list)  # resumes that failed, hangs
    finished: bool = False
    comparison: dict[str, str] = field(default_factory=dict)
    events: Counter = field(default_factory=Counter)  # kills by target
    stages: Counter = field(default_factory=Counter)  # kills by the run's stage at the kill

    @property
    def equal(self) -> bool:
        return self.finished and all(v == "equal" for v in self.comparison.values())


def timed_reference(config: Path, logfile: Path, cache: Path, what: str) -> float:
    """Run `config` uninterrupted; its wall time less any SFT built during it."""
    before = set(cache.glob("tiny-*"))
    start = time.monotonic()
    proc = selfplay_run(config, logfile)
    if proc.wait() != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{tail(logfile, 40)}")
    seconds = time.monotonic() - start
    for built in set(cache.glob("tiny-*")) - before:
        sft = json.loads((built / "selfplay_sft.json").read_text())["seconds"]
        log(f"{what}: built the SFT model ({sft:.0f} s, not counted) in {built}")
        seconds -= sft
    return seconds


# ------------------------------------------------------------------------------- embedded


def embedded_pass(args: argparse.Namespace, base: dict, work: Path, cache: Path) -> dict:
    rng = random.Random(args.seed)
    ref_dir = work / "embedded-ref"
    ref_cfg = write_config(base, work / "embedded-ref.yaml", ref_dir)
    log(f"embedded reference: {ref_cfg}")
    t_ref = timed_reference(ref_cfg, work / "embedded-ref.log", cache, "embedded reference")
    ref_url = f"sqlite:///{ref_dir / 'selfplay.db'}"
    reference = snapshot(ref_url)
    log(f"embedded reference: {t_ref:.1f} s uninterrupted; rows {rows(reference)}")
    timing = sorted(reference["_timing metrics"])
    log(f"timing metrics left out of the comparison: {timing or 'none'}")

    start = time.monotonic()
    trials: list[Trial] = []
    kills = 0
    scale = t_ref  # kill times are U(0, scale): the latest uninterrupted run's wall time
    while kills < args.kills or not trials or not trials[-1].finished:
        n = len(trials) + 1
        out_dir = work / f"embedded-soak-{n}"
        config = write_config(base, work / f"embedded-soak-{n}.yaml", out_dir)
        trial = Trial(f"embedded trial {n}", f"sqlite:///{out_dir / 'selfplay.db'}")
        trials.append(trial)
        attempt = 0
        while not trial.finished:
            attempt += 1
            kill_at = rng.uniform(0, scale) if kills < args.kills else None
            logfile = work / f"embedded-soak-{n}-attempt-{attempt}.log"
            proc = selfplay_run(config, logfile)
            outcome, seconds = wait_or_kill(proc, kill_at, args.hang_factor * t_ref + 120)
            stage, where = progress(trial.url)
            if outcome == "killed":
                kills += 1
                trial.events["selfplay run"] += 1
                trial.stages[stage] += 1
                line = f"SIGKILL {kills}/{args.kills} at {seconds:.1f} s ({where})"
                trial.kills.append(line)
                log(f"{trial.name} attempt {attempt}: {line}")
            elif outcome == "hung":
                trial.failures.append(f"attempt {attempt} hung past {seconds:.0f} s ({where})")
                log(f"{trial.name} attempt {attempt}: HUNG, killed ({where})")
            elif proc.returncode == 0:
                trial.finished = True
                note = "uninterrupted" if kill_at is None else f"before its kill at {kill_at:.1f}"
                log(f"{trial.name} attempt {attempt}: finished in {seconds:.1f} s ({note})")
                if attempt == 1:  # a whole run uninterrupted: the box's speed now
                    scale = seconds
                    log(f"kill times now U(0, {scale:.1f} s)")
            else:
                trial.failures.append(
                    f"attempt {attempt} exited {proc.returncode} ({where}): {tail(logfile, 5)}"
                )
                log(f"{trial.name} attempt {attempt}: RESUME FAILED, exit {proc.returncode}")
                log(tail(logfile, 20))
            if len(trial.failures) >= 3:
                log(f"{trial.name}: giving up after 3 failed attempts")
                break
        if not trial.finished:
            break
        trial.comparison = compare(reference, snapshot(trial.url))
        log(f"{trial.name}: {summarise(trial)}")
    return dict(
        reference=reference,
        reference_url=ref_url,
        t_ref=t_ref,
        trials=trials,
        wall=time.monotonic() - start,
    )


def summarise(trial: Trial) -> str:
    if not trial.finished:
        return "NOT FINISHED: " + "; ".join(trial.failures)
    bad = {t: v for t, v in trial.comparison.items() if v != "equal"}
    if not bad:
        return f"{len(trial.kills)} kills, all {len(trial.comparison)} comparisons equal"
    return f"{len(trial.kills)} kills, DIFFERENT: " + "; ".join(f"{t}: {v}" for t, v in bad.items())


# ---------------------------------------------------------------------------- distributed


class Schemas:
    """Fresh PostgreSQL schemas, dropped at the end unless kept."""

    def __init__(self, pg_url: str) -> None:
        self.pg_url, self.names = pg_url, []
        self.admin = create_engine(pg_url, poolclass=NullPool)

    def new(self, tag: str) -> str:
        name = f"soak_{tag}_{uuid.uuid4().hex[:8]}"
        with self.admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        self.names.append(name)
        return f"{self.pg_url}?options=-csearch_path%3D{name}"

    def drop(self) -> None:
        with self.admin.begin() as conn:
            for name in self.names:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        self.admin.dispose()


def distributed_config(
    base: dict, work: Path, name: str, store: str, redis_url: str, args: argparse.Namespace
) -> Path:
    executor = {
        "broker_url": redis_url,
        "key_prefix": f"{name}-{uuid.uuid4().hex[:6]}:",
        "visibility_timeout_s": args.visibility_timeout,
        "poll_interval_s": 0.2,
        "retry_backoff_max_s": 2,
    }
    return write_config(
        base, work / f"{name}.yaml", work / name, store={"url": store}, executor=executor
    )


def start_cluster(config: Path, logs: Path) -> Cluster:
    logs.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(config, logs)
    for queue in QUEUES:
        cluster.start(queue)
    return cluster


def distributed_pass(
    args: argparse.Namespace, base: dict, work: Path, cache: Path, embedded: dict | None
) -> dict:
    rng = random.Random(args.seed + 1)
    redis_dir = work / "redis"
    redis_dir.mkdir()
    server = OwnRedis(redis_dir)
    server.start()
    log(f"redis-server on port {server.port} (appendonly, fsync always), dir {redis_dir}")
    schemas = Schemas(args.pg_url)
    clusters: list[Cluster] = []
    try:
        ref_url = schemas.new("ref")
        ref_cfg = distributed_config(base, work, "dist-ref", ref_url, server.url, args)
        cluster = start_cluster(ref_cfg, work / "dist-ref-logs")
        clusters.append(cluster)
        log("distributed reference (workers started first, as in a deployment)")
        t_ref = timed_reference(ref_cfg, work / "dist-ref.log", cache, "distributed reference")
        cluster.stop()
        reference = snapshot(ref_url)
        log(f"distributed reference: {t_ref:.1f} s uninterrupted; rows {rows(reference)}")
        timing = sorted(reference["_timing metrics"])
        log(f"timing metrics left out of the comparison: {timing or 'none'}")
        vs_embedded = None
        if embedded is not None:
            vs_embedded = compare(embedded["reference"], reference)
            same = all(v == "equal" for v in vs_embedded.values())
            log(
                "distributed reference vs embedded reference: "
                + ("all equal" if same else "; ".join(f"{k}: {v}" for k, v in vs_embedded.items()))
            )

        # The events: each worker and the driver once, one Redis restart, extras at random.
        targets = ["driver", *QUEUES]
        rng.shuffle(targets)
        while len(targets) < args.distributed_kills - 1:
            targets.append(rng.choice(["driver", *QUEUES]))
        targets = targets[: max(args.distributed_kills - 1, 0)]
        if args.distributed_kills > 0:
            targets.insert(rng.randrange(len(targets) + 1), "redis")
        log(f"distributed events, in order: {', '.join(targets)}")

        start = time.monotonic()
        trials: list[Trial] = []
        scale = t_ref  # event gaps are U(0, scale): the latest uninterrupted run's wall time
        while targets or not trials or not trials[-1].finished:
            n = len(trials) + 1
            url = schemas.new(f"t{n}")
            config = distributed_config(base, work, f"dist-soak-{n}", url, server.url, args)
            trial = Trial(f"distributed trial {n}", url)
            trials.append(trial)
            cluster = start_cluster(config, work / f"dist-soak-{n}-logs")
            clusters.append(cluster)
            seconds = run_distributed_trial(
                trial, config, cluster, server, targets, scale, rng, args
            )
            cluster.stop()
            if trial.finished and not trial.kills:  # a whole run uninterrupted
                scale = seconds
                log(f"event gaps now U(0, {scale:.1f} s)")
            if not trial.finished:
                break
            trial.comparison = compare(reference, snapshot(trial.url))
            log(f"{trial.name}: {summarise(trial)}")
        return dict(
            reference=reference,
            t_ref=t_ref,
            trials=trials,
            vs_embedded=vs_embedded,
            wall=time.monotonic() - start,
        )
    finally:
        for c in clusters:
            c.stop()
        server.stop()
        if not args.keep:
            schemas.drop()


def run_distributed_trial(
    trial: Trial,
    config: Path,
    cluster: Cluster,
    server: OwnRedis,
    targets: list[str],
    t_ref: float,
    rng: random.Random,
    args: argparse.Namespace,
) -> float:
    """Drive one trial: fire `targets` (consumed from the front), each U(0, t_ref) seconds after
    the previous event (or the trial's start), until the driver finishes; the trial's seconds."""
    start = time.monotonic()
    next_at = rng.uniform(0, t_ref)
    attempt = 1
    logs = config.parent / f"{config.stem}-logs"
    driver = selfplay_run(config, logs / f"driver-{attempt}.log")
    limit = args.hang_factor * t_ref + 300
    while True:
        now = time.monotonic() - start
        if driver.poll() is not None:
            if driver.returncode == 0:
                trial.finished = True
                log(f"{trial.name}: driver finished at {now:.1f} s (attempt {attempt})")
                return now
            _, where = progress(trial.url)
            trial.failures.append(f"driver attempt {attempt} exited {driver.returncode} ({where})")
            log(f"{trial.name}: DRIVER FAILED, exit {driver.returncode} ({where})")
            log(tail(logs / f"driver-{attempt}.log", 20))
            if len(trial.failures) >= 3:
                return now
            attempt += 1
            driver = selfplay_run(config, logs / f"driver-{attempt}.log")
            continue
        for queue, proc in cluster.procs.items():
            if proc.poll() is not None:
                trial.failures.append(f"worker {queue} died on its own (exit {proc.returncode})")
                log(f"{trial.name}: WORKER {queue} DIED (exit {proc.returncode}); restarting")
                cluster.start(queue)
        if now > limit:
            _, where = progress(trial.url)
            trial.failures.append(f"hung: not finished after {now:.0f} s ({where})")
            log(f"{trial.name}: HUNG after {now:.0f} s ({where})\n{cluster.log_tails()}")
            kill_group(driver)
            return now
        if targets and now >= next_at:
            next_at = now + rng.uniform(0, t_ref)
            target = targets.pop(0)
            stage, where = progress(trial.url)
            if target == "driver":
                kill_group(driver)
                attempt += 1
                driver = selfplay_run(config, logs / f"driver-{attempt}.log")
                what = "SIGKILL driver, rerun"
            elif target == "redis":
                server.kill()
                time.sleep(args.redis_down)
                server.start()
                what = f"SIGKILL redis-server, restarted after {args.redis_down:.0f} s"
            else:
                log_path = cluster.logs / f"worker-{target}-{cluster.starts[target]}.log"
                busy = running_tasks(log_path)
                was = cluster.kill(target)
                cluster.start(target)
                state = f"running {', '.join(busy)}" if busy else "idle"
                if was is not None:
                    state = f"had exited {was}"
                what = f"SIGKILL worker {target} ({state}), restarted"
            trial.events[target] += 1
            trial.stages[stage] += 1
            line = f"{what} at {now:.1f} s ({where})"
            trial.kills.append(line)
            log(f"{trial.name}: {line}")
        time.sleep(0.1)


# ------------------------------------------------------------------------------- the report


def report(args: argparse.Namespace, embedded: dict | None, dist: dict | None) -> None:
    print("\n## Random-kill soak\n")
    print(f"load average (1 min) at the start {LOAD[0]:.1f}, at the end {os.getloadavg()[0]:.1f}\n")
    print(
        f"reduced quickstart: {args.rounds} rounds × {args.prompts_per_round} prompts × K=8, "
        f"blocks of {args.prompts_per_batch}, ≤ {args.max_steps} steps, SFT {args.sft_steps} "
        f"steps (cached); kill seed {args.seed}\n"
    )
    print(
        "| pass | kills survived / tried | resumes failed | trials | comparisons equal "
        "| reference run | soak wall time |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, res in (("embedded (SQLite)", embedded), ("distributed (PG, Redis)", dist)):
        if res is None:
            continue
        trials = res["trials"]
        tried = sum(len(t.kills) for t in trials)
        survived = sum(len(t.kills) for t in trials if t.equal)
        failed = sum(len(t.failures) for t in trials)
        equal = sum(1 for t in trials for v in t.comparison.values() if v == "equal")
        compared = sum(len(t.comparison) for t in trials)
        by_target = Counter()
        for t in trials:
            by_target.update(t.events)
        detail = ", ".join(f"{k} {v}" for k, v in sorted(by_target.items()))
        print(
            f"| {name} | **{survived} / {tried}** ({detail}) | {failed} | {len(trials)} "
            f"| {equal} / {compared} | {res['t_ref']:.0f} s | {res['wall']:.0f} s |"
        )
    for name, res in (("embedded", embedded), ("distributed", dist)):
        if res is not None:
            stages = Counter()
            for t in res["trials"]:
                stages.update(t.stages)
            hit = ", ".join(f"{k} {v}" for k, v in stages.most_common())
            print(f"\n{name}: the run's stage at the kills: {hit}")
    ref = (embedded or dist)["reference"]
    print(
        "\n| table | rows (reference) | "
        + " | ".join(t.name for res in (embedded, dist) if res for t in res["trials"])
        + (" | distributed ref vs embedded ref |" if dist and dist["vs_embedded"] else " |")
    )
    ncols = sum(len(res["trials"]) for res in (embedded, dist) if res)
    extra = 1 if dist and dist["vs_embedded"] else 0
    print("|---|---|" + "---|" * (ncols + extra))
    for table, count in rows(ref).items():
        cells = [
            t.comparison.get(table, "—").split(":")[0]
            for res in (embedded, dist)
            if res
            for t in res["trials"]
        ]
        if extra:
            cells.append(dist["vs_embedded"].get(table, "—").split(":")[0])
        print(f"| {table} | {count} | " + " | ".join(cells) + " |")
    print("\nKills (time after the attempt's or trial's start; the store's state just after):\n")
    for res in (embedded, dist):
        if res is None:
            continue
        for t in res["trials"]:
            for line in t.kills:
                print(f"- {t.name}: {line}")
            for line in t.failures:
                print(f"- {t.name}: **FAILURE** {line}")
            for table, verdict in t.comparison.items():
                if verdict != "equal":
                    print(f"- {t.name}: **{table}** {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the embedded run.")
    parser.add_argument(
        "--distributed-kills",
        type=int,
        default=5,
        help="Distributed events: driver, each worker, one Redis restart (5), extras at random.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the kill times.")
    parser.add_argument("--skip-distributed", action="store_true")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts-per-round", type=int, default=256)
    parser.add_argument("--prompts-per-batch", type=int, default=32)
    parser.add_argument("--heldout-size", type=int, default=200)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--sft-steps", type=int, default=800)
    parser.add_argument(
        "--visibility-timeout",
        type=int,
        default=90,
        help="executor.visibility_timeout_s: a killed worker's task comes back after this.",
    )
    parser.add_argument("--redis-down", type=float, default=2.0, help="Seconds Redis stays down.")
    parser.add_argument(
        "--hang-factor", type=float, default=10, help="A run not done after this × T is hung."
    )
    parser.add_argument("--workdir", type=Path, help="Default: a fresh temporary directory.")
    parser.add_argument("--keep", action="store_true", help="Keep the PostgreSQL schemas.")
    args = parser.parse_args()
    if not args.skip_distributed and not shutil.which("redis-server"):
        raise SystemExit("redis-server is not installed (or pass --skip-distributed)")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.setdefault("SELFPLAY_CACHE_DIR", str(work / "cache")))
    cache.mkdir(parents=True, exist_ok=True)
    log(f"work dir {work}, SELFPLAY_CACHE_DIR {cache}, load average {os.getloadavg()}")
    base = reduced_config(args)
    start = time.monotonic()
    embedded = None if args.skip_embedded else embedded_pass(args, base, work, cache)
    dist = None if args.skip_distributed else distributed_pass(args, base, work, cache, embedded)
    log(f"soak done in {time.monotonic() - start:.0f} s")
    report(args, embedded, dist)
    ok = all(t.equal for res in (embedded, dist) if res for t in res["trials"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
