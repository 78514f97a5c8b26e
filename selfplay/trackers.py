"""Experiment trackers (`logging.report_to`): each finished round's training metrics and
figures, read from the store, sent to TensorBoard, Weights & Biases or MLflow.

The store stays the record and the trackers are a view of it, so embedded and distributed runs
report alike: the driver starts the trackers before any round work (one that cannot start is a
ConfigError, exit 2), hands each round it finishes to `Trackers.log_round`, and closes them at
the end. A tracker that fails mid-run is reported once and dropped; the loop goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Metric
from db.summaries import round_metrics, round_summaries
from selfplay.config import ConfigError, LoggingConfig, SelfplayConfig
from selfplay.progress import Reporter
from selfplay.redact import mask_url, mask_urls

log = logging.getLogger(__name__)

# MLflow refuses longer parameter values (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH) and more
# parameters per log_batch call (MAX_PARAMS_TAGS_PER_BATCH).
_MLFLOW_MAX_PARAM_CHARS = 6000
_MLFLOW_PARAMS_PER_BATCH = 100


class Tracker(Protocol):
    """One experiment tracker. Metric names are `<axis>/<name>` (`train/loss` over the run's
    global training step, `round/heldout_accuracy` over the round index)."""

    def start(self, run_name: str, run_key: str, config: dict[str, Any]) -> None:
        """Open (or, for the same `run_key`, continue) the tracker's run and record `config`."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record `metrics` at `step` of their axis."""

    def close(self) -> None:
        """Flush and finish the tracker's run."""


class TensorBoardTracker:
    """Event files in <dir>/tensorboard/<run name>, written by torch's SummaryWriter."""

    def __init__(self, cfg: LoggingConfig, directory: Path) -> None:
        self._directory = directory / "tensorboard"
        self._writer: Any = None

    def start(self, run_name: str, run_key: str, config: dict[str, Any]) -> None:
        """Open the run's event file and write the config as a text summary."""
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self._directory / run_name))
        self._writer.add_text("config", f"```json\n{json.dumps(config, indent=2)}\n```")
        self._writer.flush()

    def log(self, metrics: dict[str, float], step: int) -> None:
        """One scalar per metric; flushed at once, so that a failing disk shows here."""
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self._writer.close()


class WandbTracker:
    """A wandb run (WANDB_MODE=offline writes it under <dir>/wandb for a later `wandb sync`);
    each metric axis has its own step metric `step/<axis>`, so that round figures and training
    steps share one run."""

    def __init__(self, cfg: LoggingConfig, directory: Path) -> None:
        self._project, self._directory = cfg.project, directory
        self._run: Any = None
        self._axes: set[str] = set()

    def start(self, run_name: str, run_key: str, config: dict[str, Any]) -> None:
        """Start the run (id `run_key`: a resumed loop continues the same wandb run)."""
        import wandb

        self._directory.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=self._project,
            name=run_name,
            id=run_key,
            resume="allow",
            dir=str(self._directory),
            config=config,
            reinit="create_new",
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log `metrics` with `step/<axis>` = `step` for each of their axes."""
        axes = {name.partition("/")[0] for name in metrics}
        for axis in axes - self._axes:
            self._run.define_metric(f"step/{axis}")
            self._run.define_metric(f"{axis}/*", step_metric=f"step/{axis}")
        self._axes |= axes
        self._run.log(metrics | {f"step/{axis}": step for axis in axes})

    def close(self) -> None:
        """Finish the run."""
        self._run.finish()


class MlflowTracker:
    """An MLflow run in experiment `logging.project`, the config as its parameters; the store is
    `logging.mlflow_tracking_uri`, else MLFLOW_TRACKING_URI, else sqlite:///<dir>/mlflow.db."""

    def __init__(self, cfg: LoggingConfig, directory: Path) -> None:
        self._project, self._directory = cfg.project, directory
        self._uri = cfg.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self._client: Any = None
        self._run_id = ""

    def start(self, run_name: str, run_key: str, config: dict[str, Any]) -> None:
        """Continue the run tagged `selfplay.run_key` = `run_key`, or create it with the
        config's leaves as parameters (`training.lr`, …)."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if self._uri is None:
            self._directory.mkdir(parents=True, exist_ok=True)
            self._uri = f"sqlite:///{self._directory / 'mlflow.db'}"
        self._client = client = MlflowClient(tracking_uri=self._uri)
        experiment = client.get_experiment_by_name(self._project)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(self._project)
        )
        found = client.search_runs(
            [experiment_id], f"tags.`selfplay.run_key` = '{run_key}'", max_results=1
        )
        if found:
            self._run_id = found[0].info.run_id
            client.update_run(self._run_id, status="RUNNING")
            return
        tags = {"selfplay.run_key": run_key, "selfplay.run": run_name}
        self._run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        params = [Param(k, v[:_MLFLOW_MAX_PARAM_CHARS]) for k, v in _leaves(config).items()]
        for i in range(0, len(params), _MLFLOW_PARAMS_PER_BATCH):
            client.log_batch(self._run_id, params=params[i : i + _MLFLOW_PARAMS_PER_BATCH])

    def log(self, metrics: dict[str, float], step: int) -> None:
        """One log_batch call per step."""
        from mlflow.entities import Metric as MlflowMetric

        now = int(time.time() * 1000)
        batch = [MlflowMetric(name, value, now, step) for name, value in metrics.items()]
        self._client.log_batch(self._run_id, metrics=batch)

    def close(self) -> None:
        """Mark the run finished."""
        self._client.set_terminated(self._run_id)


TRACKERS: dict[str, Callable[[LoggingConfig, Path], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MlflowTracker,
}
"""`logging.report_to` name → tracker class; each name is also the extra that installs it."""


class Trackers:
    """The configured trackers as one: started together (a failure is a ConfigError naming
    `logging.report_to`), fed each finished round from the store, closed together. A tracker
    that raises after its start is reported once on the reporter and dropped."""

    def __init__(self, cfg: LoggingConfig, reporter: Reporter) -> None:
        self._cfg, self._reporter = cfg, reporter
        self._live: dict[str, Tracker] = {}

    def start(self, cfg: SelfplayConfig) -> None:
        """Start every tracker of `cfg.logging.report_to` on the run `cfg.run.name`, with the
        resolved config (every URL's password masked) as its config; raises ConfigError."""
        directory = self._cfg.dir or cfg.run.output_dir / "trackers"
        config = mask_urls(cfg.model_dump(mode="json"))
        # Same store and run name, same key: a resumed loop continues its tracker runs.
        key = hashlib.sha256(f"{mask_url(cfg.db_url)}\n{cfg.run.name}".encode()).hexdigest()[:16]
        for name in self._cfg.report_to:
            tracker = TRACKERS[name](self._cfg, directory)
            try:
                tracker.start(cfg.run.name, key, config)
            except ImportError as err:
                self.close()
                raise ConfigError(
                    f"logging.report_to: {name} needs the {name} extra "
                    f"(pip install 'selfplay[{name}]'): {err}"
                ) from None
            except Exception as err:  # a third party's start failing for any reason
                self.close()
                raise ConfigError(
                    f"logging.report_to: {name} cannot start: {_one_line(err)}"
                ) from None
            self._live[name] = tracker

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Send `metrics` at `step` to every live tracker."""
        for name, tracker in list(self._live.items()):
            try:
                tracker.log(metrics, step)
            except Exception as err:  # a tracker never stops the loop
                self._drop(name, err)

    def log_round(self, sessions: sessionmaker[Session], run_id: int, round_index: int) -> None:
        """Send a finished round from the store: its training metrics as `train/<name>` at the
        run's global step (the steps of earlier rounds plus the round's own, counted from 1),
        its figures (db.summaries.RoundSummary) as `round/<field>` and its other stages'
        metrics as `<stage>/<name>` at step `round_index`. Only what was measured is sent: a
        win-rate run sends `round/win_rate`, `round/win_rate_se`, `round/win_rate_lc` (and
        `eval/win_rate_n`, `eval/win_rate_tie_share`, …) and no `round/heldout_accuracy`."""
        if not self._live:
            return
        with sessions() as s:
            offset = _steps_before(s, run_id, round_index)
            steps: dict[int, dict[str, float]] = {}
            for name, points in round_metrics(s, run_id, round_index, "train").items():
                for step, value in points:
                    steps.setdefault(step, {})[f"train/{name}"] = value
            (summary,) = round_summaries(s, run_id, round_index)
            stage_values = s.execute(
                select(Metric.stage, Metric.name, Metric.value).where(
                    Metric.run_id == run_id,
                    Metric.round_index == round_index,
                    Metric.stage != "train",
                    Metric.step == 0,
                )
            ).all()
        for step in sorted(steps):
            self.log(steps[step], offset + step)
        figures = {
            f"round/{name}": float(value)
            for name, value in summary.to_dict().items()
            if isinstance(value, int | float) and not isinstance(value, bool) and name != "index"
        }
        figures |= {f"round/judgments_{k}": float(n) for k, n in summary.judgments.items()}
        figures |= {f"{stage}/{name}": value for stage, name, value in stage_values}
        self.log(figures, round_index)

    def close(self) -> None:
        """Close every live tracker (a failure is reported, not raised)."""
        for name, tracker in list(self._live.items()):
            try:
                tracker.close()
            except Exception as err:
                self._reporter.line(f"logging.report_to: {name} failed to close: {_one_line(err)}")
                log.warning("tracker %s failed to close", name, exc_info=True)
        self._live.clear()

    def _drop(self, name: str, err: Exception) -> None:
        tracker = self._live.pop(name)
        log.warning("tracker %s failed; dropped for the rest of the run", name, exc_info=True)
        self._reporter.line(
            f"logging.report_to: {name} failed ({_one_line(err)}); "
            "not reporting to it for the rest of the run"
        )
        with contextlib.suppress(Exception):  # it has failed already, and that is reported
            tracker.close()


def _steps_before(session: Session, run_id: int, round_index: int) -> int:
    """The training steps of a run's rounds before `round_index` (each round's last step)."""
    last = (
        select(func.max(Metric.step).label("last"))
        .where(
            Metric.run_id == run_id,
            Metric.stage == "train",
            Metric.round_index >= 0,
            Metric.round_index < round_index,
        )
        .group_by(Metric.round_index)
        .subquery()
    )
    return int(session.scalar(select(func.coalesce(func.sum(last.c.last), 0))) or 0)


def _leaves(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as {"section.key": value as text} (strings as they are, others JSON)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}"
