"""The commands that run the loop: `selfplay run`, `selfplay judge`, `selfplay worker`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selfplay.cli.common import config_or_exit, err, fail, out
from selfplay.config import ConfigError, load_config
from selfplay.progress import RichReporter
from selfplay.redact import mask_url


def run(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    rounds: Annotated[
        int | None, typer.Option("--rounds", min=1, help="Rounds to run (default: run.rounds).")
    ] = None,
) -> None:
    """Run (or resume) the self-improvement loop of a config."""
    from selfplay.driver import run_loop

    cfg = config_or_exit(config)
    _quiet_transformers()
    err.print(f"run [bold]{cfg.run.name}[/]: store {mask_url(cfg.db_url)}", highlight=False)
    try:
        run_loop(cfg, rounds=rounds, reporter=RichReporter(out))
    except ConfigError as e:
        raise fail(str(e), 2) from None


def judge(
    config: Annotated[Path, typer.Argument(help="YAML config (its judge, store and pairing).")],
    data: Annotated[
        Path,
        typer.Argument(
            help='JSONL: {"prompt": ..., "response": ...} or {"prompt": ..., "responses": [...]} '
            'a line, "answer" optional.'
        ),
    ],
    run_name: Annotated[
        str | None, typer.Option("--run", help="Run to store them under (default: run.name).")
    ] = None,
    pairs: Annotated[
        bool, typer.Option("--pairs", help="Also build pairs with the configured builder.")
    ] = False,
) -> None:
    """Label a JSONL of prompts and responses with the config's judge, into the store
    (resumable: run it again and it judges only what is missing)."""
    from selfplay.labeling import LabelDataError, label_file

    cfg = config_or_exit(config)
    if run_name is not None:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": run_name})})
    _quiet_transformers()
    err.print(f"run [bold]{cfg.run.name}[/]: store {mask_url(cfg.db_url)}", highlight=False)
    try:
        result = label_file(cfg, data, pairs=pairs, reporter=RichReporter(out))
    except (ConfigError, LabelDataError) as e:  # the config, the file or --run: the user's
        raise fail(str(e), 2) from None
    out.print(
        f"{result.prompts} prompts, {result.responses} responses ({result.stored_now} new); "
        f"judged {result.judged_now} now, {result.failed} failed in all"
        + (f"; {result.pairs} pairs" if pairs else ""),
        highlight=False,
    )


def worker(
    config: Annotated[Path, typer.Argument(help="YAML config (executor and store sections).")],
    queues: Annotated[
        str, typer.Option("--queues", help="Comma-separated: generate, judge, train.")
    ] = "generate,judge,train",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Processes.")] = 1,
) -> None:
    """Start a Celery worker that runs the loop's tasks from these queues."""
    try:
        from workers.worker import parse_queues, start_worker

        _quiet_transformers()
        start_worker(load_config(config), parse_queues(queues), concurrency)
    except ConfigError as e:
        raise fail(str(e), 2) from None
    except ImportError as e:
        hint = "install the distributed extra: pip install 'selfplay[distributed]'"
        raise fail(f"{e}; {hint}", 2) from None


def _quiet_transformers() -> None:
    """Our own progress bars are enough: hide transformers' per-load and per-save bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
