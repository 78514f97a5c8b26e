"""What a stage is given: the run's Context (config, store, run id, progress) and its Engines.

The engines (the task, the generation backend, the judge) are built lazily, on first use, in
the process and stage that uses them: a Celery worker on the `generate` queue never builds the
judge (no API key needed, no reward model on its GPU), a trainer builds neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from db.models import Round
from selfplay.config import SelfplayConfig
from selfplay.generation.base import GenerationBackend
from selfplay.judges.base import Judge, JudgeEnv, Policy
from selfplay.progress import Reporter
from selfplay.tasks.base import Task


class Engines:
    """The run's task, generation backend and judge, each built on first use and kept."""

    def __init__(
        self, cfg: SelfplayConfig, sessions: sessionmaker[Session], task: Task | None = None
    ) -> None:
        self.cfg, self.sessions = cfg, sessions
        self._task = task
        self._backend: GenerationBackend | None = None
        self._judge: Judge | None = None

    @property
    def task(self) -> Task:
        """The run's task (prompts, held-out set, verifier): given, or built on first use."""
        if self._task is None:
            from selfplay.tasks import make_task

            self._task = make_task(self.cfg.task, self.cfg.run.seed)
        return self._task

    @property
    def backend(self) -> GenerationBackend:
        """The generation engine, created on first use and kept loaded."""
        if self._backend is None:
            from selfplay.generation import make_backend

            model = self.cfg.model
            self._backend = make_backend(self.cfg.generation, model.dtype, model.chat_template)
        return self._backend

    @property
    def judge(self) -> Judge:
        """The configured judge, created on first use."""
        return self.build_judge()

    def build_judge(self) -> Judge:
        """Build the configured judge if it is not yet (a ConfigError naming `judge.name` when
        its factory raises), and return it."""
        if self._judge is None:
            from selfplay.judges import make_judge

            env = JudgeEnv(task=self.task, seed=self.cfg.run.seed, sessions=self.sessions)
            self._judge = make_judge(self.cfg.judge, env)
        return self._judge

    @property
    def judge_name(self) -> str:
        """The name judgments are stored under; a built-in's is known without building it."""
        from selfplay.judges import BUILTIN_JUDGES

        if self.cfg.judge.name in BUILTIN_JUDGES:
            return self.cfg.judge.name
        return self.judge.name

    def policy(self, checkpoint_path: str) -> Policy | None:
        """The policy at this checkpoint for a judge that asks the policy itself; None (and
        no engine built) when the judge does not."""
        return Policy(self.backend, checkpoint_path) if self.judge.needs_policy else None

    def close(self) -> None:
        """Shut the generation engine down (vLLM's engine core, SGLang, a server selfplay
        started: a process left with them hangs at exit) and close the judge (the api judge's
        HTTP client and loop). Only what was built is closed."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        if self._judge is not None:
            self._judge.close()
            self._judge = None


@dataclass
class Context:
    """What every stage is given: the config, the store, the run, a progress sink, and the
    engines it may build."""

    cfg: SelfplayConfig
    sessions: sessionmaker[Session]
    run_id: int
    reporter: Reporter
    engines: Engines = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.engines is None:
            self.engines = Engines(self.cfg, self.sessions)

    def close(self) -> None:
        """Close the engines this process built."""
        self.engines.close()


def derive_seed(*parts: int) -> int:
    """A deterministic 31-bit seed from integers (run seed, round, chunk, …)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h % (2**31 - 1)


def get_round(session: Session, round_id: int) -> Round:
    """The round row by id; LookupError when there is none."""
    rnd = session.get(Round, round_id)
    if rnd is None:
        raise LookupError(f"round id {round_id} does not exist")
    return rnd


def metric_rows(
    run_id: int, round_index: int, stage: str, step: int, values: dict[str, float]
) -> list[dict]:
    """`metrics` rows for these values of one (run, round, stage, step)."""
    return [
        dict(run_id=run_id, round_index=round_index, stage=stage, step=step, name=k, value=v)
        for k, v in values.items()
    ]
