"""Prompts from a Hugging Face dataset: a hub id, a builder over data files, or a saved directory.

`task.dataset.path` names what `datasets` opens: a directory `Dataset.save_to_disk` or
`DatasetDict.save_to_disk` wrote (read with `datasets.load_from_disk`), or anything
`datasets.load_dataset` takes (a hub id with an optional `subset` and `revision`, a builder such
as `json` or `parquet` with `data_files`, a directory of data files). One split is read; its
rows' prompt field (a string or chat messages) or messages field (a transcript) and answer field
become the prompts, a seeded `heldout_share` of the rows the held-out set.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfplay.tasks.base import GivenPromptsTask, Prompt
from selfplay.tasks.records import TaskDataError, parse_answer, parse_prompt, parse_transcript

if TYPE_CHECKING:
    import datasets

    from selfplay.config import DatasetConfig


def _saved_kind(path: Path) -> str | None:
    """What save_to_disk wrote in `path`: "dict" (a DatasetDict), "dataset" (a Dataset), or
    None (not a saved dataset)."""
    if (path / "dataset_dict.json").is_file():
        return "dict"
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "dataset"
    return None


def _read_metadata(path: Path, name: str) -> dict[str, Any]:
    """The JSON object save_to_disk wrote in `path/name`; raises TaskDataError naming the file
    and the problem."""
    try:
        value = json.loads((path / name).read_text(encoding="utf-8"))
    except OSError as err:
        raise TaskDataError(f"dataset {path}: cannot read {name}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise TaskDataError(f"dataset {path}: cannot read {name}: {err}") from None
    except json.JSONDecodeError as err:
        raise TaskDataError(
            f"dataset {path}: {name}: invalid JSON: {err.msg} (line {err.lineno}, column "
            f"{err.colno})"
        ) from None
    if not isinstance(value, dict):
        raise TaskDataError(
            f"dataset {path}: {name}: expected a JSON object, got {type(value).__name__}"
        )
    return value


def _load_saved(path: Path, split: str, kind: str) -> datasets.Dataset:
    """The split of a saved DatasetDict, or a saved Dataset whole; raises TaskDataError."""
    import datasets

    if kind == "dict":
        splits = _read_metadata(path, "dataset_dict.json").get("splits")
        if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
            raise TaskDataError(
                f"dataset {path}: dataset_dict.json: field 'splits' must be a list of split names"
            )
        if split not in splits:
            raise TaskDataError(
                f"dataset {path}: no split {split!r} (task.dataset.split); it has "
                f"{', '.join(splits)}"
            )
        path = path / split
    state = _read_metadata(path, "state.json")
    _read_metadata(path, "dataset_info.json")  # load_from_disk's error would not name it
    if not state.get("_data_files"):  # datasets cannot open a saved dataset of no rows
        raise TaskDataError(f"dataset {path}: no rows")
    try:
        return datasets.load_from_disk(str(path))
    except Exception as err:  # missing or corrupt Arrow files, state.json fields alike
        raise TaskDataError(f"dataset {path}: cannot load: {_describe(err)}") from None


def _load_builder(cfg: DatasetConfig) -> datasets.Dataset:
    """`datasets.load_dataset` of the configured split; raises TaskDataError."""
    import datasets
    from datasets.data_files import EmptyDatasetError

    where = dict(data_files=cfg.data_files, revision=cfg.revision)
    try:
        return datasets.load_dataset(cfg.path, cfg.subset, split=cfg.split, **where)
    except EmptyDatasetError:
        raise TaskDataError(
            f"dataset {cfg.path}: a directory that is no dataset: neither a save_to_disk "
            "directory (dataset_dict.json, or state.json and dataset_info.json) nor data files"
        ) from None
    except ValueError as err:
        if not str(err).startswith("Unknown split"):
            raise TaskDataError(f"dataset {cfg.path}: cannot load: {_first_line(err)}") from None
        missing = f"dataset {cfg.path}: no split {cfg.split!r} (task.dataset.split)"
        try:
            splits = datasets.get_dataset_split_names(cfg.path, cfg.subset, **where)
        except Exception:  # listing them failed: load_dataset's own message names them
            raise TaskDataError(f"{missing}: {_first_line(err)}") from None
        raise TaskDataError(f"{missing}; it has {', '.join(splits)}") from None
    except Exception as err:  # hub, network, builder and file errors alike
        cause = err.__cause__ or err.__context__
        detail = _describe(err)
        if cause is not None and str(cause).strip():  # a builder's error wraps the file's
            detail += f" ({_describe(cause)})"
        raise TaskDataError(f"dataset {cfg.path}: cannot load: {detail}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _describe(err: BaseException) -> str:
    """`Type: first line of the message`: an error in one line."""
    return f"{type(err).__name__}: {_first_line(err)}"


def load_split(cfg: DatasetConfig) -> datasets.Dataset:
    """The configured split as a `datasets.Dataset`; raises TaskDataError naming the dataset."""
    if importlib.util.find_spec("datasets") is None:
        raise TaskDataError(
            "task.name dataset needs the datasets package: pip install 'selfplay[datasets]'"
        )
    path = Path(cfg.path).expanduser()
    if path.is_dir() and (kind := _saved_kind(path)) is not None:
        return _load_saved(path, cfg.split, kind)
    if not path.exists() and cfg.path.startswith(("/", "./", "../", "~")):
        raise TaskDataError(f"dataset {cfg.path}: no such directory")
    files = [cfg.data_files] if isinstance(cfg.data_files, str) else cfg.data_files or []
    for file in map(Path, files):
        if file.is_file() and file.stat().st_size == 0:  # load_dataset says only StopIteration
            raise TaskDataError(f"dataset {cfg.path}: data file {file}: no rows")
    return _load_builder(cfg)


class DatasetTask(GivenPromptsTask):
    """Prompts from one split of a Hugging Face dataset.

    Row i's prompt is its `prompt_field` (a string, or chat messages ending with a user turn)
    or, when `messages_field` is set, that transcript (trailing assistant turns dropped); its
    answer is `answer_field` (unset: none). With `heldout_share` > 0, max(1, round(share ×
    rows)) of the rows, drawn with the seed (only rows with an answer when `answer_field` is
    set), are the held-out set; the rest are train prompts, which rounds cycle through in an order shuffled with the seed.
    """

    def __init__(self, cfg: DatasetConfig, seed: int = 0) -> None:
        self.cfg = cfg
        ds = load_split(cfg)
        name = f"dataset {cfg.path} (split {cfg.split})"
        fields = [cfg.messages_field or cfg.prompt_field]
        if cfg.answer_field is not None:
            fields.append(cfg.answer_field)
        missing = [f for f in fields if f not in ds.column_names]
        if missing:
            raise TaskDataError(
                f"{name}: no field {missing[0]!r} (its fields: {', '.join(ds.column_names)}); "
                "set task.dataset.prompt_field, messages_field or answer_field"
            )
        if len(ds) == 0:
            raise TaskDataError(f"{name}: no rows")
        prompts = [
            self._prompt(row, f"{name}, row {i}") for i, row in enumerate(ds.select_columns(fields))
        ]
        heldout = self._heldout_indices(prompts, seed, name)
        train = [p for i, p in enumerate(prompts) if i not in heldout]
        if not train:
            raise TaskDataError(f"{name}: no train prompts left after the held-out share")
        super().__init__("dataset", train, [prompts[i] for i in sorted(heldout)], seed)

    def _prompt(self, row: dict[str, Any], where: str) -> Prompt:
        """A row's prompt; raises TaskDataError naming `where` (the dataset and the row)."""
        cfg = self.cfg
        field = cfg.messages_field or cfg.prompt_field
        try:
            if row[field] is None:
                raise ValueError(f"field {field!r} is null")
            answer = None
            if cfg.answer_field is not None:
                answer = parse_answer(row[cfg.answer_field], cfg.answer_field)
            parse = parse_prompt if cfg.messages_field is None else parse_transcript
            return parse(row[field], field, answer)
        except ValueError as err:
            raise TaskDataError(f"{where}: {err}") from None

    def _heldout_indices(self, prompts: list[Prompt], seed: int, name: str) -> set[int]:
        share = self.cfg.heldout_share
        if share == 0:
            return set()
        # With an answer field, held-out rows need their answer (accuracy reads it); without
        # one every row may be held out (open-ended evaluation: win rate, judge score).
        answered = [
            i
            for i, p in enumerate(prompts)
            if self.cfg.answer_field is None or p.answer is not None
        ]
        size = max(1, round(share * len(prompts)))
        if size > len(answered):
            raise TaskDataError(
                f"{name}: task.dataset.heldout_share {share} asks for {size} held-out prompts, "
                f"only {len(answered)} rows have an answer"
            )
        return set(random.Random(f"dataset-heldout:{seed}").sample(answered, size))
