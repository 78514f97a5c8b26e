"""Export preference pairs for training elsewhere: JSONL, Parquet, or a Hugging Face datasets dir.

Rows are in the prompt/chosen/rejected format that TRL's `DPOTrainer` reads, with the scores,
the margin, both lengths and the provenance ids (run, round, pair, prompt, responses, the
generating checkpoint) as extra columns. When a pair of the export has a conversation prompt,
every row is in TRL's conversational format: `prompt` a list of {role, content} messages (a
plain prompt as one user turn), `chosen` and `rejected` each one assistant message; otherwise
all three are strings. Every format streams: pairs come from the store one keyset page at a
time and are written before the next is read, so memory is flat in the rows.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db.pairs import PairFilter, PairRow, has_conversations, iter_pairs

FORMATS = ("jsonl", "parquet", "hf")
ROW_GROUP = 50_000

# Column order of every format; (name, pyarrow type name), "messages" a list of {role, content}
# in a conversational export and a string otherwise.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("prompt", "messages"),
    ("chosen", "messages"),
    ("rejected", "messages"),
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


def record(p: PairRow, conversational: bool) -> dict[str, Any]:
    """One exported row; `conversational`: prompt, chosen and rejected as chat messages."""
    prompt: str | list[dict[str, str]] = p.prompt
    chosen: str | list[dict[str, str]] = p.chosen
    rejected: str | list[dict[str, str]] = p.rejected
    if conversational:
        prompt = p.prompt_messages or [{"role": "user", "content": p.prompt}]
        chosen = [{"role": "assistant", "content": p.chosen}]
        rejected = [{"role": "assistant", "content": p.rejected}]
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
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


def _batches(
    session: Session, f: PairFilter, batch: int, conversational: bool
) -> Iterator[list[dict[str, Any]]]:
    for page in iter_pairs(session, f, batch=batch):
        yield [record(p, conversational) for p in page]


def _schema(conversational: bool) -> Any:
    import pyarrow as pa

    text = pa.string()
    if conversational:
        text = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return pa.schema(
        [(name, text if kind == "messages" else getattr(pa, kind)()) for name, kind in COLUMNS]
    )


def _write_jsonl(batches: Iterator[list[dict[str, Any]]], path: Path) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for rows in batches:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            n += len(rows)
    return n


def _write_parquet(batches: Iterator[list[dict[str, Any]]], path: Path, schema: Any) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

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


def _write_hf(batches: Iterator[list[dict[str, Any]]], path: Path, schema: Any) -> int:
    import datasets

    # Parquet first (streamed), then datasets memory-maps it into its Arrow cache and saves it.
    with tempfile.TemporaryDirectory(prefix="selfplay-export-") as tmp:
        staged = Path(tmp) / "pairs.parquet"
        n = _write_parquet(batches, staged, schema)
        ds = datasets.Dataset.from_parquet(str(staged), cache_dir=str(Path(tmp) / "cache"))
        if path.exists():
            shutil.rmtree(path)
        ds.save_to_disk(str(path))
        del ds
    return n


def export_pairs(session: Session, f: PairFilter, fmt: str, path: Path, batch: int = 5000) -> int:
    """Write the pairs matching `f` to `path` in `fmt` (jsonl | parquet | hf); returns the count.

    `hf` writes a directory that `datasets.load_from_disk` opens (and replaces one already there).
    The rows are conversational when a matching pair's prompt is a conversation.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    conversational = has_conversations(session, f)
    batches = _batches(session, f, batch, conversational)
    if fmt == "jsonl":
        return _write_jsonl(batches, path)
    write = _write_parquet if fmt == "parquet" else _write_hf
    return write(batches, path, _schema(conversational))
