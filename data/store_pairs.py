"""Performance pairs in the store: pairs derived from judgments, and imported pairs (table
``imported_pairs``).

The pairs format is defined once, in :mod:`data.pairs`: the import reads files with its reader
(:func:`data.pairs.read_pairs`), and the rows :meth:`PairTables.performance_pairs` yields are built on
its field list (:data:`data.pairs.FIELDS`), so every writer and reader of the format agrees on it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from data import schema
from data.pairs import FIELDS as PAIR_FIELDS
from data.pairs import SOURCES, pair_key, read_pairs, validate_pair
from data.store_checks import check_name, normalize_since
from data.store_core import StoreCore, StoreError
from data.store_judgments import LATEST_ADJUDICATIONS_SQL

#: The UNIQUE key of ``imported_pairs``: the fields of :func:`data.pairs.pair_key`, in its order.
_KEY_COLUMNS: tuple[str, ...] = ("query_id", "backend", "source")
#: Columns an import compares to tell "already imported" from "conflicts with an earlier import".
_COMPARED_COLUMNS: tuple[str, ...] = tuple(f for f in PAIR_FIELDS if f not in _KEY_COLUMNS) + ("extra",)

#: The SQL of each pairs field for a pair derived from judgments; ``image`` carries the image's sha256
#: until its file is looked up.
_JUDGMENT_COLUMNS: dict[str, str] = {
    "query_id": "g.query_id",
    "question": "q.question",
    "image": "q.image_sha256",
    "image_sha256": "q.image_sha256",
    "category": "COALESCE(q.category, d.category)",
    "backend": "g.backend",
    "answer": "a.text",
    "correct": "COALESCE(adj.correct, g.correct)",
    "latency_s": "a.latency_s",
    "source": "'judgment'",
}

# One row per judged (query, backend), with the mean of its verdicts, or its latest adjudication
# (a lead annotator's final verdict where the annotators split) when there is one.
_JUDGMENT_PAIRS_SQL = """
SELECT {columns}
FROM (SELECT query_id, backend, AVG(correct) AS correct FROM verdicts {where}
      GROUP BY query_id, backend) AS g
JOIN queries q ON q.id = g.query_id
JOIN answers a ON a.query_id = g.query_id AND a.backend = g.backend
LEFT JOIN decisions d ON d.query_id = g.query_id
LEFT JOIN (""" + LATEST_ADJUDICATIONS_SQL + """) AS adj ON adj.query_id = g.query_id AND adj.backend = g.backend
"""

# For statistics: the same rows, without reading the answers (a foreign key guarantees each exists).
_JUDGMENT_SCORES_SQL = """
SELECT g.backend, COALESCE(q.category, d.category) AS category, COALESCE(adj.correct, g.correct) AS correct
FROM (SELECT query_id, backend, AVG(correct) AS correct FROM verdicts {where}
      GROUP BY query_id, backend) AS g
JOIN queries q ON q.id = g.query_id
LEFT JOIN decisions d ON d.query_id = g.query_id
LEFT JOIN (""" + LATEST_ADJUDICATIONS_SQL + """) AS adj ON adj.query_id = g.query_id AND adj.backend = g.backend
"""

_IMPORTED_PAIRS_SQL = "SELECT {columns}, extra FROM imported_pairs {where}"


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0
    #: (line number, message) for every bad line, in line order.
    errors: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _filters(names: list[str] | None, since_iso: str | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if names is not None:
        clauses.append(f"backend IN ({', '.join('?' for _ in names)})" if names else "0")
        params.extend(names)
    if since_iso is not None:
        clauses.append("created_at >= ?")
        params.append(since_iso)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def pair_parts(source: str | None, backends: Sequence[str] | None, since: Any, *,
               scores_only: bool = False) -> list[tuple[str, str, list[Any]]]:
    """[(part, sql, params)] for the judgment-derived ("judgment") and the imported ("imported") pairs.

    With ``scores_only`` the judgment part selects backend, category and correct only (for statistics).
    """
    if source is not None and source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)} or None, got {source!r}")
    names: list[str] | None = None
    if backends is not None:
        if isinstance(backends, (str, bytes)):
            raise ValueError("backends must be a list of names")
        names = [check_name(b, "backend name") for b in backends]
    since_iso = normalize_since(since)
    parts = []
    if source in (None, "judgment"):
        where, params = _filters(names, since_iso)
        # a judgment changed later (the Annotate tab's undo) is kept but no longer counts
        where = (where + " AND" if where else "WHERE") + " judgment_id IN (SELECT id FROM judgments WHERE replaced_by IS NULL)"
        if scores_only:
            sql = _JUDGMENT_SCORES_SQL.format(where=where)
        else:
            columns = ", ".join(_JUDGMENT_COLUMNS[name] for name in PAIR_FIELDS)
            sql = _JUDGMENT_PAIRS_SQL.format(columns=columns, where=where)
        parts.append(("judgment", sql, params))
    where, params = _filters(names, since_iso)
    if source is not None:
        where = (where + " AND" if where else "WHERE") + " source = ?"
        params.append(source)
    parts.append(("imported", _IMPORTED_PAIRS_SQL.format(columns=", ".join(PAIR_FIELDS), where=where), params))
    return parts


class PairTables(StoreCore):
    """Read performance pairs; import pairs files."""

    def performance_pairs(
        self, *, source: str | None = None, backends: Sequence[str] | None = None, since: Any = None
    ) -> Iterator[dict[str, Any]]:
        """Training rows in the pairs format (:mod:`data.pairs`), judgments and imported pairs together.

        Judgment rows (source "judgment"): one per judged (query, backend); ``correct`` is the mean
        of every verdict on it, or the latest adjudication of it when a lead annotator recorded one; ``image`` is the absolute path of the stored image (None if the
        file is missing); ``category`` is the query's, else the router's predicted one. Imported rows
        follow, in import order, as imported (extra fields included). Filters: ``source``
        ("judgment" also matches imported rows whose source is "judgment"), ``backends``, ``since``
        (judgments made, or rows imported, at or after that UTC time). Streams from its own
        connection, so it can be consumed slowly or from another thread.
        """
        parts = pair_parts(source, backends, since)
        return self._iter_pairs(parts)

    def _iter_pairs(self, parts: list[tuple[str, str, list[Any]]]) -> Iterator[dict[str, Any]]:
        at_hand: dict[str, str | None] = {}

        def image_for(sha: str) -> str | None:
            if sha not in at_hand:
                path = self.image_path(sha)
                at_hand[sha] = str(path) if path.is_file() else None
            return at_hand[sha]

        if self._closed:
            raise StoreError("the store is closed")
        db = self._connect()
        conn = db.conn
        extra = len(PAIR_FIELDS)  # imported rows: the ``extra`` column follows the fields
        try:
            conn.execute("BEGIN")  # one snapshot across both parts
            for part, sql, params in parts:
                order = " ORDER BY q.created_at, g.query_id, g.backend" if part == "judgment" else " ORDER BY id"
                cursor = conn.execute(sql + order, params)
                while True:
                    batch = cursor.fetchmany(2000)
                    if not batch:
                        break
                    for r in batch:
                        row = dict(zip(PAIR_FIELDS, r, strict=False))  # imported rows end with ``extra``
                        row["correct"] = float(row["correct"])
                        if part == "judgment":
                            row["image"] = image_for(row["image"])
                        elif r[extra]:
                            row.update(json.loads(r[extra]))
                        yield row
        except sqlite3.Error as error:
            raise StoreError(f"cannot read pairs from {self.path}: {self._describe(error)}") from error
        finally:
            conn.close()

    def import_pairs(self, path: str | os.PathLike[str], *, skip_bad: bool = False) -> ImportReport:
        """Import a pairs JSONL file (benchmark runs, or pairs exported from another store).

        Every bad line is reported by number. With bad lines nothing is imported unless
        ``skip_bad``, which imports the good ones. A row whose (query_id, backend, source) is
        already imported with the same values, or is a judgment pair this store already holds, is
        skipped (so importing a file twice is harmless); with different values it is a bad line.
        All in one transaction. Raises OSError when the file cannot be read.
        """
        result = read_pairs(path, strict=False)
        errors = list(result.errors)
        existing_sql = (
            f"SELECT {', '.join(_COMPARED_COLUMNS)} FROM imported_pairs WHERE "
            + " AND ".join(f"{key} = ?" for key in _KEY_COLUMNS)
        )

        def write(db: Database) -> ImportReport:
            report = ImportReport()
            fresh: list[dict[str, Any]] = []
            for row, line in zip(result.rows, result.line_numbers, strict=True):
                extras = {k: v for k, v in row.items() if k not in PAIR_FIELDS}
                record = {key: row[key] for key in PAIR_FIELDS}
                record["extra"] = json.dumps(extras, ensure_ascii=False, sort_keys=True) if extras else None
                existing = db.execute(existing_sql, list(pair_key(row))).fetchone()
                if existing is not None:
                    if tuple(existing) == tuple(record[k] for k in _COMPARED_COLUMNS):
                        report.skipped += 1
                    else:
                        errors.append((line, "conflicts with a pair imported earlier for the same query_id, "
                                             "backend and source (different values)"))
                    continue
                if row["source"] == "judgment" and db.execute(
                    "SELECT 1 FROM verdicts WHERE query_id = ? AND backend = ? LIMIT 1",
                    [row["query_id"], row["backend"]],
                ).fetchone() is not None:
                    report.skipped += 1  # this store holds the judgments themselves
                    continue
                fresh.append(record)
            report.errors = sorted(errors)
            if report.errors and not skip_bad:
                return report
            now = schema.utc_now()
            for record in fresh:
                record["created_at"] = now
            if fresh:
                db["imported_pairs"].insert_all(fresh, batch_size=500)
            report.imported = len(fresh)
            return report

        return self._transact(write, what="import")

    def add_pairs(self, rows: Iterable[Mapping[str, Any]]) -> ImportReport:
        """Store pairs made in this process (``python -m router bootstrap`` adds each answer as it comes).

        Each row is validated first (:func:`data.pairs.validate_pair`; a relative ``image`` is taken
        relative to the current folder): a bad row raises ValueError naming its index and nothing is
        written. A row whose (query_id, backend, source) is already stored is skipped, whatever its
        values (a run that resumes never duplicates a pair); the others are inserted as imported pairs,
        extra fields kept. All in one transaction.
        """
        records = []
        for index, row in enumerate(rows):
            try:
                clean = validate_pair(row)
            except ValueError as error:
                raise ValueError(f"pair {index}: {error}") from None
            extras = {k: v for k, v in clean.items() if k not in PAIR_FIELDS}
            record = {key: clean[key] for key in PAIR_FIELDS}
            record["extra"] = json.dumps(extras, ensure_ascii=False, sort_keys=True) if extras else None
            records.append(record)
        exists_sql = "SELECT 1 FROM imported_pairs WHERE " + " AND ".join(f"{key} = ?" for key in _KEY_COLUMNS)

        def write(db: Database) -> ImportReport:
            report = ImportReport()
            now = schema.utc_now()
            fresh: list[dict[str, Any]] = []
            seen: set[tuple[Any, ...]] = set()
            for record in records:
                key = tuple(record[k] for k in _KEY_COLUMNS)
                if key in seen or db.execute(exists_sql, list(key)).fetchone() is not None:
                    report.skipped += 1
                    continue
                seen.add(key)
                fresh.append({**record, "created_at": now})
            if fresh:
                db["imported_pairs"].insert_all(fresh, batch_size=500)
            report.imported = len(fresh)
            return report

        return self._transact(write, what="pairs")
