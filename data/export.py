"""Export a store's performance pairs and judgments as JSONL, CSV or Parquet, and its battles as arena votes.

- ``jsonl``: ``OUT`` is the pairs file, in exactly the format ``python -m data import`` reads (so
  export -> import keeps every row); the judgments go next to it in ``<OUT stem>.judgments.jsonl``.
- ``csv`` / ``parquet``: ``OUT`` is a folder (created if missing) holding ``pairs.<ext>`` and
  ``judgments.<ext>``. Pairs columns are the pairs format's fields (fields beyond the format that
  imported rows carried are kept by JSONL only).

Judgment rows: one per judged backend of a judgment (a judgment with only a best answer gives one
row with an empty backend): judgment_id, query_id, backend, correct, best, true_answer, reason,
annotator, session_id, client_key, created_at, question, category, image_sha256, answer.

``arena``: ``OUT`` is a JSONL file with one battle per pair of backends per judgment
(:mod:`data.battles`), in the fields FastChat's rating code reads: ``model_a``, ``model_b``, ``winner``
(``model_a``, ``model_b``, ``tie``, ``tie (bothbad)``), ``anony`` (blind and not flagged), ``judge``,
``tstamp`` (Unix seconds), ``question_id``, ``category``, ``language`` (null: not known), plus
``judgment_id``, ``session_id``, ``blind`` and ``flag_reason``.

``export_all(store, fmt, folder)`` does the same into ``folder`` and returns one zip of both files.

``export_download(store, fmt, tables, folder)`` is the leaderboard's download button: one file of one
table (``routelens-judgments.csv``, ``routelens-pairs.parquet``, ...), or, for both tables, a zip whose
name says it holds two (``routelens-judgments-and-pairs-csv.zip``). It holds no server paths: the
pairs' ``image`` (an absolute path on the server) is left out of CSV and Parquet and empty in JSONL, and
every image is referred to by its sha256 key (``image_sha256``, computed from the file where a row
lacks it). Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.pairs import FIELDS as PAIR_FIELDS
from data.pairs import write_pairs
from data.store import Store

FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet")

ARENA_FORMAT = "arena"
JUDGMENT_FIELDS: tuple[str, ...] = (
    "judgment_id", "query_id", "backend", "correct", "best", "true_answer", "reason", "annotator",
    "session_id", "client_key", "created_at", "question", "category", "image_sha256", "answer",
    "blind", "anonymous", "flag_reason", "guidelines_version", "replaced_by", "replaced_at",
)


def judgments_jsonl_path(out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.judgments.jsonl")


def export_arena(store: Store, out: str | os.PathLike[str], *, anonymous_only: bool = False) -> tuple[Path, int]:
    """Write the battles as arena votes (JSONL, one battle a line); returns (path, battles written)."""
    out = Path(os.path.abspath(out))
    if out.is_dir():
        raise ValueError(f"{out} is a folder; for arena, --out names the votes file (e.g. {out / 'votes.jsonl'})")
    rows = (battle.to_arena() for battle in store.battles(anonymous_only=anonymous_only))
    return out, _write_jsonl(rows, out)


def export(store: Store, fmt: str, out: str | os.PathLike[str], *, source: str | None = None) -> dict[str, Any]:
    """Write pairs and judgments; returns {"pairs": (path, rows), "judgments": (path, rows)}; for
    ``arena``, {"battles": (path, rows)}."""
    if fmt == ARENA_FORMAT:
        return {"battles": export_arena(store, out)}
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS + (ARENA_FORMAT,))}, got {fmt!r}")
    out = Path(os.path.abspath(out))
    pairs = store.performance_pairs(source=source)
    if fmt == "jsonl":
        if out.is_dir():
            raise ValueError(f"{out} is a folder; for jsonl, --out names the pairs file (e.g. {out / 'pairs.jsonl'})")
        n_pairs = write_pairs(pairs, out)
        judgments_path = judgments_jsonl_path(out)
        n_judgments = _write_jsonl(store.judgment_rows(), judgments_path)
        return {"pairs": (out, n_pairs), "judgments": (judgments_path, n_judgments)}
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; for {fmt}, --out names a folder that gets pairs.{fmt} and judgments.{fmt}")
    out.mkdir(parents=True, exist_ok=True)
    pair_rows = ({key: row.get(key) for key in PAIR_FIELDS} for row in pairs)
    judgment_rows = ({key: row.get(key) for key in JUDGMENT_FIELDS} for row in store.judgment_rows())
    writer = _write_csv if fmt == "csv" else _write_parquet
    pairs_path, judgments_path = out / f"pairs.{fmt}", out / f"judgments.{fmt}"
    n_pairs = writer(pair_rows, PAIR_FIELDS, pairs_path)
    n_judgments = writer(judgment_rows, JUDGMENT_FIELDS, judgments_path)
    return {"pairs": (pairs_path, n_pairs), "judgments": (judgments_path, n_judgments)}


def export_all(store: Store, fmt: str, folder: str | os.PathLike[str]) -> Path:
    """Export pairs and judgments in ``fmt`` into ``folder`` and return one zip holding both files
    (``routelens-<fmt>.zip``), for a single download button."""
    folder = Path(folder)
    staging = folder / f"routelens-{fmt}"
    if fmt == "jsonl":
        written = export(store, fmt, staging / "pairs.jsonl")
    else:
        written = export(store, fmt, staging)
    archive = folder / f"routelens-{fmt}.zip"
    _zip(written, archive)
    return archive


#: What the leaderboard's download can hold: one table, or both in a zip.
DOWNLOAD_TABLES: tuple[str, ...] = ("judgments", "pairs", "both")
#: The pairs columns of a download (no ``image``: on the server it is an absolute path; ``image_sha256`` names the photo).
DOWNLOAD_PAIR_FIELDS: tuple[str, ...] = tuple(f for f in PAIR_FIELDS if f != "image")


@dataclass(frozen=True)
class Download:
    """A file prepared for the download button: where it is, and what it holds in words (for its label)."""

    path: Path
    label: str
    rows: dict[str, int]


def export_download(store: Store, fmt: str, tables: str, folder: str | os.PathLike[str]) -> Download:
    """Write ``tables`` (``judgments``, ``pairs`` or ``both``) as ``fmt`` into ``folder`` for a person to
    download: one file per table, a zip only for both, never a server path in a cell or a file name."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if tables not in DOWNLOAD_TABLES:
        raise ValueError(f"tables must be one of {', '.join(DOWNLOAD_TABLES)}, got {tables!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = ("judgments", "pairs") if tables == "both" else (tables,)
    staging = folder / f"routelens-{fmt}" if tables == "both" else folder
    written: dict[str, tuple[Path, int]] = {}
    for table in wanted:
        name = f"{table}.{fmt}" if tables == "both" else f"routelens-{table}.{fmt}"
        written[table] = (staging / name, _write_table(store, table, fmt, staging / name))
    rows = {table: count for table, (_, count) in written.items()}
    if tables != "both":
        ((path, count),) = written.values()
        what = "judged answers (one row per backend judged)" if tables == "judgments" else "performance pairs"
        return Download(path, f"{path.name}: {count:,} {what}", rows)
    archive = folder / f"routelens-judgments-and-pairs-{fmt}.zip"
    _zip(written, archive)
    label = (f"{archive.name}: a zip, because it holds two tables: judgments.{fmt} ({rows['judgments']:,} rows) "
             f"and pairs.{fmt} ({rows['pairs']:,} rows)")
    return Download(archive, label, rows)


def _write_table(store: Store, table: str, fmt: str, path: Path) -> int:
    if table == "judgments":
        rows: Iterator[dict[str, Any]] = ({key: row.get(key) for key in JUDGMENT_FIELDS} for row in store.judgment_rows())
        columns = JUDGMENT_FIELDS
    else:
        rows = _pairs_by_key(store.performance_pairs())
        columns = PAIR_FIELDS if fmt == "jsonl" else DOWNLOAD_PAIR_FIELDS
    if fmt == "jsonl":
        return _write_jsonl(({key: row.get(key) for key in columns} for row in rows), path)
    return (_write_csv if fmt == "csv" else _write_parquet)(({key: row.get(key) for key in columns} for row in rows), columns, path)


def _pairs_by_key(pairs: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Pairs rows with the photo named by its sha256 key only: ``image`` (a server path) emptied, and
    ``image_sha256`` computed from that file where the row lacks it (once per file)."""
    from data.images import image_key

    keys: dict[str, str | None] = {}
    for row in pairs:
        row = dict(row)
        path = row.pop("image", None)
        if not row.get("image_sha256") and path:
            if path not in keys:
                try:
                    keys[path] = image_key(path)
                except (OSError, ValueError):  # missing or unreadable: no key rather than a path
                    keys[path] = None
            row["image_sha256"] = keys[path]
        row["image"] = None
        yield row


def _atomic(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"


def _finish(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> int:
    tmp = _atomic(path)
    count = 0
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False))
                handle.write("\n")
                count += 1
        _finish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _write_csv(rows: Iterator[dict[str, Any]], columns: tuple[str, ...], path: Path) -> int:
    tmp = _atomic(path)
    count = 0
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns))
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                count += 1
        _finish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _write_parquet(rows: Iterator[dict[str, Any]], columns: tuple[str, ...], path: Path) -> int:
    import pyarrow as pa  # optional dependencies, only needed here
    import pyarrow.parquet as pq

    floats = {"correct", "latency_s"}
    ints = {"judgment_id", "guidelines_version"}
    bools = {"blind", "anonymous"}
    schema = pa.schema([
        (name, pa.float64() if name in floats else pa.int64() if name in ints else pa.bool_() if name in bools
         else pa.string())
        for name in columns
    ])
    tmp = _atomic(path)
    count = 0
    try:
        with pq.ParquetWriter(str(tmp), schema) as writer:
            batch: list[dict[str, Any]] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= 10_000:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    count += len(batch)
                    batch = []
            if batch or count == 0:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
        _finish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _zip(written: dict[str, tuple[Path, int]], archive: Path) -> None:
    """The written files in one zip, by their names, written atomically."""
    tmp = _atomic(archive)
    try:
        with zipfile.ZipFile(tmp, "x", compression=zipfile.ZIP_DEFLATED) as bundle:
            for path, _count in written.values():
                bundle.write(path, arcname=path.name)
        _finish(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
