"""Experiment trackers, offline and for real: what each one wrote is read back with its own
reader (TensorBoard's EventAccumulator, the records of wandb's offline run file, MLflow's
client on a local SQLite store)."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from db.engine import make_engine, session_factory
from db.models import Checkpoint
from selfplay.cli import app
from selfplay.config import ConfigError, SelfplayConfig, parse_config
from selfplay.driver import create_store, ensure_run, run_loop
from selfplay.trackers import Trackers
from tests.conftest import JUDGE_SCORES, WIN_RATES, make_open_ended, seed_store
from tests.selfplay.stages.conftest import LENGTH_JUDGE, TINY

PASSWORD = "hunter22-secret"
# The `demo` run of seed_store: rounds 0 and 1, each with train steps 1-3 of loss 1/step.
LOSS = [1.0, 1 / 2, 1 / 3] * 2
ACCURACY = [0.5, 0.75]


class Lines:
    """A reporter that keeps its lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator:
        yield lambda n=1: None

    def line(self, text: str) -> None:
        self.lines.append(text)


def _config(tmp_path: Path, report_to: list[str], **logging: object) -> SelfplayConfig:
    return parse_config(
        {
            "run": {"name": "demo", "output_dir": str(tmp_path / "out")},
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "generation": {"openai": {"url": f"http://user:{PASSWORD}@judge.example/v1"}},
            "logging": {"report_to": report_to, **logging},
        }
    )


def _report_demo(
    cfg: SelfplayConfig, reporter: Lines | None = None, metric: str | None = None
) -> Trackers:
    """Start the trackers of `cfg` and send them both rounds of the seeded `demo` run (evaluated
    by `metric`, `make_open_ended`, when given)."""
    run_id = seed_store(cfg.db_url)["run"]
    if metric is not None:
        make_open_ended(cfg.db_url, metric)
    engine = make_engine(cfg.db_url)
    trackers = Trackers(cfg.logging, reporter or Lines())
    trackers.start(cfg)
    for index in (0, 1):
        trackers.log_round(session_factory(engine), run_id, index)
    trackers.close()
    engine.dispose()
    return trackers


def _scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(logdir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_event_files_hold_train_steps_round_figures_and_the_masked_config(tmp_path):
    cfg = _config(tmp_path, ["tensorboard"])
    _report_demo(cfg)
    logdir = tmp_path / "out" / "trackers" / "tensorboard" / "demo"
    loss = _scalars(logdir, "train/loss")
    assert [step for step, _ in loss] == [1, 2, 3, 4, 5, 6]  # round 1 continues round 0's steps
    assert [v for _, v in loss] == pytest.approx(LOSS)
    assert _scalars(logdir, "round/heldout_accuracy") == [(0, 0.5), (1, 0.75)]
    assert _scalars(logdir, "round/pairs") == [(0, 6.0), (1, 6.0)]
    events = EventAccumulator(str(logdir))
    events.Reload()
    (text,) = events.Tensors("config/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert PASSWORD not in shown
    assert "http://user:***@judge.example/v1" in shown and '"name": "demo"' in shown


@pytest.mark.parametrize(
    ("metric", "figures"),
    [
        ("win_rate", {"win_rate": WIN_RATES, "win_rate_se": WIN_RATES, "win_rate_lc": WIN_RATES}),
        ("judge_score", {"judge_score": JUDGE_SCORES, "judge_score_se": JUDGE_SCORES}),
    ],
)
def test_tensorboard_gets_each_rounds_open_ended_evaluation(tmp_path, metric, figures):
    cfg = _config(tmp_path, ["tensorboard"])
    _report_demo(cfg, metric=metric)
    logdir = tmp_path / "out" / "trackers" / "tensorboard" / "demo"
    for name, values in figures.items():
        expected = [(i, pytest.approx(values[i][name])) for i in (0, 1)]
        assert _scalars(logdir, f"round/{name}") == expected
        assert _scalars(logdir, f"eval/{name}") == expected
    n = f"{metric}_n"
    assert _scalars(logdir, f"eval/{n}") == [(0, 40.0), (1, 40.0)]  # and the rest of `eval`
    events = EventAccumulator(str(logdir))
    events.Reload()
    assert "round/heldout_accuracy" not in events.Tags()["scalars"]  # not measured: not sent


def _wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a .wandb file: a 7-byte header, then LevelDB's log format (32 KiB blocks
    of chunks, each with a 7-byte header: CRC32, length, type full/first/middle/last)."""
    data, pos, pending = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield pending


def test_wandb_offline_run_holds_each_axis_with_its_step_and_the_masked_config(
    tmp_path, monkeypatch
):
    import wandb
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    cfg = _config(tmp_path, ["wandb"], project="tests")
    _report_demo(cfg)
    wandb.teardown()  # wandb-core writes the run file in the background until it stops
    (path,) = (tmp_path / "out" / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")
    history, config, names = [], {}, []
    for data in _wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {
                "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                for i in record.history.item
            }
            history.append(row)
        elif kind == "run":
            names.append(record.run.display_name)
            config |= {i.key: json.loads(i.value_json) for i in record.run.config.update}
    assert names == ["demo"]
    train = [(r["step/train"], r["train/loss"]) for r in history if "train/loss" in r]
    assert [s for s, _ in train] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in train] == pytest.approx(LOSS)
    rounds = [(r["step/round"], r["round/heldout_accuracy"]) for r in history if "step/round" in r]
    assert rounds == [(0, 0.5), (1, 0.75)]
    assert config["run"]["name"] == "demo"
    assert config["generation"]["openai"]["url"] == "http://user:***@judge.example/v1"
    assert PASSWORD not in path.read_bytes().decode(errors="replace")


def test_mlflow_local_store_holds_metric_histories_and_a_resumed_loop_continues_its_run(
    tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _config(tmp_path, ["mlflow"])
    _report_demo(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'out' / 'trackers' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("selfplay")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "demo" and run.info.status == "FINISHED"
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in loss] == [1, 2, 3, 4, 5, 6]
    assert [m.value for m in loss] == pytest.approx(LOSS)
    accuracy = client.get_metric_history(run.info.run_id, "round/heldout_accuracy")
    assert [(m.step, m.value) for m in accuracy] == [(0, 0.5), (1, 0.75)]
    params = run.data.params
    assert params["run.name"] == "demo" and params["training.loss"] == "dpo"
    assert params["generation.openai.url"] == "http://user:***@judge.example/v1"
    assert PASSWORD not in json.dumps(params)

    # The same run started again (a resumed loop) reports into the same MLflow run.
    trackers = Trackers(cfg.logging, Lines())
    trackers.start(cfg)
    trackers.log({"round/extra": 1.0}, 2)
    trackers.close()
    (again,) = client.search_runs([experiment.experiment_id])
    assert again.info.run_id == run.info.run_id
    assert [m.value for m in client.get_metric_history(run.info.run_id, "round/extra")] == [1.0]


# The SummaryWriter's own thread dies on the deleted directory too, as it should.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_tracker_failing_mid_run_is_reported_once_and_the_others_go_on(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _config(tmp_path, ["tensorboard", "mlflow"])
    run_id = seed_store(cfg.db_url)["run"]
    engine = make_engine(cfg.db_url)
    sessions = session_factory(engine)
    reporter = Lines()
    trackers = Trackers(cfg.logging, reporter)
    trackers.start(cfg)
    trackers.log_round(sessions, run_id, 0)
    # The event file's directory disappears under the writer: its next flush raises.
    shutil.rmtree(tmp_path / "out" / "trackers" / "tensorboard")
    trackers.log_round(sessions, run_id, 1)
    trackers.log({"round/extra": 1.0}, 2)
    trackers.close()
    engine.dispose()
    assert len(reporter.lines) == 1, reporter.lines
    assert reporter.lines[0].startswith("logging.report_to: tensorboard failed (")
    assert "not reporting to it for the rest of the run" in reporter.lines[0]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'out' / 'trackers' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("selfplay").experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6
    assert len(client.get_metric_history(run.info.run_id, "round/extra")) == 1


def test_a_tracker_without_its_extra_is_a_config_error_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the wandb extra were not installed
    trackers = Trackers(_config(tmp_path, ["wandb"]).logging, Lines())
    with pytest.raises(ConfigError) as err:
        trackers.start(_config(tmp_path, ["wandb"]))
    message = str(err.value)
    assert message.startswith("logging.report_to: wandb needs the wandb extra")
    assert "pip install 'selfplay[wandb]'" in message and "\n" not in message


def test_a_tracker_that_cannot_start_exits_2_before_any_round_work(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / "out"
    data = {key: dict(value) for key, value in TINY.items()}
    data["run"] = {"name": "t", "output_dir": str(out), "rounds": 1}
    data["logging"] = {"report_to": ["tensorboard"], "dir": str(tmp_path / "file")}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["run", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error")]
    assert "logging.report_to: tensorboard cannot start:" in line
    engine = make_engine(f"sqlite:///{out / 'selfplay.db'}")
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Checkpoint)) == 0  # no SFT, no round
    engine.dispose()


def test_a_one_round_run_reports_its_training_and_round_figures_to_tensorboard(
    tmp_path, monkeypatch
):
    (tmp_path / "length_judge.py").write_text(LENGTH_JUDGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = {key: dict(value) for key, value in TINY.items()}
    data["run"] = {"name": "tb", "seed": 0, "rounds": 1, "output_dir": str(tmp_path / "out")}
    data["judge"] = {"name": "length_judge:Length"}
    data["training"] = {"batch_size": 1, "max_steps": 3, "epochs": 3}
    data["logging"] = {"report_to": ["tensorboard"]}
    cfg = parse_config(data)
    (summary,) = run_loop(cfg)
    assert summary.status == "done" and summary.pairs > 0
    logdir = tmp_path / "out" / "trackers" / "tensorboard" / "tb"
    assert [step for step, _ in _scalars(logdir, "train/loss")] == [1, 2, 3]
    assert _scalars(logdir, "round/heldout_accuracy") == [
        (0, pytest.approx(summary.heldout_accuracy))
    ]


def test_logging_may_change_when_a_run_is_resumed(tmp_path):
    engine = create_store(f"sqlite:///{tmp_path / 'store.db'}")
    sessions = session_factory(engine)
    run_id = ensure_run(sessions, _config(tmp_path, []))
    assert ensure_run(sessions, _config(tmp_path, ["tensorboard"], project="other")) == run_id
    engine.dispose()
