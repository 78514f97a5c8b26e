"""Export preference pairs for training elsewhere: JSONL, Parquet, or a Hugging Face datasets dir.

Rows are in the prompt/chosen/rejected format that TRL's `DPOTrainer` reads, with the scores,
the margin, both lengths and the provenance ids (run, round, pair, prompt, responses, the
generating checkpoint) as extra columns. Every format streams: pairs come from the store one
keyset page at a time and are written before the next is read, so memory is flat in the rows.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db.pairs import PairFilter, PairRow, iter_pairs

FORMATS = ("jsonl", "parquet", "hf")
ROW_GROUP = 50_000

# Column order of every format; (name, pyarrow type name).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("prompt", "string"),
    ("chosen", "string"),
    ("rejected", "string"),
    ("chosen_score", "float64"),
    ("rejected_score", "float64"),
    ("margin", "float64"),
    ("chosen_tokens", "int64"),
    ("rejected_tokens", "int64"),
    ("run", "string"),
    ("round", "int64"),
    ("pair_id", "int64"),
    ("prompt_id", "int64"),
    ("chosen_id", "int64"),
    ("rejected_id", "int64"),
    ("checkpoint_id", "int64"),
    ("builder", "string"),
)


def record(p: PairRow) -> dict[str, Any]:
    """One exported row."""
    return {
        "prompt": p.prompt,
        "chosen": p.chosen,
        "rejected": p.rejected,
        "chosen_score": p.chosen_score,
        "rejected_score": p.rejected_score,
        "margin": p.margin,
        "chosen_tokens": p.chosen_tokens,
        "rejected_tokens": p.rejected_tokens,
        "run": p.run,
        "round": p.round,
        "pair_id": p.id,
        "prompt_id": p.prompt_id,
        "chosen_id": p.chosen_id,
        "rejected_id": p.rejected_id,
        "checkpoint_id": p.checkpoint_id,
        "builder": p.builder,
    }


def _batches(session: Session, f: PairFilter, batch: int) -> Iterator[list[dict[str, Any]]]:
    for page in iter_pairs(session, f, batch=batch):
        yield [record(p) for p in page]


def _write_jsonl(batches: Iterator[list[dict[str, Any]]], path: Path) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for rows in batches:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            n += len(rows)
    return n


def _write_parquet(batches: Iterator[list[dict[str, Any]]], path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in COLUMNS])
    n = 0
    pending: list[dict[str, Any]] = []
    with pq.ParquetWriter(path, schema) as writer:
        for rows in batches:
            pending.extend(rows)
            n += len(rows)
            # Row groups of ROW_GROUP rows: few enough that the file's metadata stays small.
            if len(pending) >= ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(pending, schema=schema))
                pending = []
        if pending or n == 0:
            writer.write_table(pa.Table.from_pylist(pending, schema=schema))
    return n


def _write_hf(batches: Iterator[list[dict[str, Any]]], path: Path) -> int:
    import datasets

    # Parquet first (streamed), then datasets memory-maps it into its Arrow cache and saves it.
    with tempfile.TemporaryDirectory(prefix="selfplay-export-") as tmp:
        staged = Path(tmp) / "pairs.parquet"
        n = _write_parquet(batches, staged)
        ds = datasets.Dataset.from_parquet(str(staged), cache_dir=str(Path(tmp) / "cache"))
        if path.exists():
            shutil.rmtree(path)
        ds.save_to_disk(str(path))
        del ds
    return n


_WRITERS = {"jsonl": _write_jsonl, "parquet": _write_parquet, "hf": _write_hf}


def export_pairs(session: Session, f: PairFilter, fmt: str, path: Path, batch: int = 5000) -> int:
    """Write the pairs matching `f` to `path` in `fmt` (jsonl | parquet | hf); returns the count.

    `hf` writes a directory that `datasets.load_from_disk` opens (and replaces one already there).
    """
    if fmt not in _WRITERS:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _WRITERS[fmt](_batches(session, f, batch), path)
