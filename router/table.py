"""The query table: performance pairs folded into one row per query and one column per backend, and its splits.

Pairs are one row per (query, backend). They are folded into a table with one row per query and one
column per backend (NaN where a backend has no result), so every question and image is embedded once
however many backends answered it: 2.5 million pairs over 5 backends are 500 thousand feature vectors.
When a (query, backend) cell has human judgments they decide it (their mean); otherwise the mean of
the benchmark rows does.

Splits are by image: the split key is the image's sha256 (or the file's hash when only a path is
given, or the query id when there is no image), hashed with a fixed salt into train / calibration /
held-out. Because the assignment depends only on the key, an image keeps its fold across retrains,
so the active router and a new candidate are compared on rows neither trained on.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.images import image_key
from data.pairs import format_line_errors, iter_pairs_file, validate_pair
from router.base import RouterError
from router.categories import normalise_category

#: Salt of the image split; changing it moves images between folds (and breaks comparisons).
SPLIT_SALT = "routelens-split-v1"
FOLD_TRAIN, FOLD_CALIB, FOLD_HELDOUT = 0, 1, 2


@dataclass
class PairTable:
    """One row per query, one column per backend; ``correct`` is NaN where a backend has no result."""

    backends: list[str]
    query_ids: list[str]
    questions: list[str]
    images: list[str | None]
    image_keys: list[str | None]
    categories: list[str | None]
    groups: list[str]
    correct: np.ndarray  # (n_queries, n_backends) float32
    latency: np.ndarray  # (n_queries, n_backends) float32
    stats: dict[str, Any] = field(default_factory=dict)
    #: Where each query came from: its pairs file, its bootstrap set, or "judgment" (empty: one origin).
    origins: list[str] = field(default_factory=list)

    @property
    def n_queries(self) -> int:
        return len(self.query_ids)

    def origin_weights(self, index: np.ndarray | Sequence[int]) -> np.ndarray:
        """Row weights over ``index`` that give every origin the same total weight (mean weight 1).

        Six hundred synthetic shapes must not outvote a hundred real photos when the prior and the
        calibration are fitted: each set is one piece of evidence about how backends behave, and users
        ask about photos. With one origin (or none recorded) every weight is 1.
        """
        idx = np.asarray(index, dtype=np.int64)
        if idx.size == 0 or len(self.origins) != self.n_queries:
            return np.ones(idx.size)
        names, codes = np.unique(np.array([self.origins[i] for i in idx], dtype=object).astype(str), return_inverse=True)
        counts = np.bincount(codes, minlength=len(names)).astype(np.float64)
        return idx.size / (len(names) * counts[codes])

    @property
    def labelled(self) -> np.ndarray:
        return np.isfinite(self.correct)

    @classmethod
    def from_columns(
        cls,
        *,
        backends: Sequence[str],
        query_ids: Sequence[str],
        questions: Sequence[str],
        groups: Sequence[str],
        query_index: np.ndarray,
        backend_index: np.ndarray,
        correct: np.ndarray,
        categories: Sequence[str | None] | None = None,
        judged: np.ndarray | None = None,
        latency: np.ndarray | None = None,
    ) -> PairTable:
        """A table straight from pair columns (one entry per pair row), folded like ``build_table``.

        For callers that hold pairs as arrays (the 2.5-million-row benchmark, a Parquet export):
        no per-row Python work beyond the per-query lists.
        """
        q = np.asarray(query_index, dtype=np.int64)
        c = np.asarray(backend_index, dtype=np.int64)
        y = np.asarray(correct, dtype=np.float64)
        nq, nb = len(query_ids), len(backends)
        judged_arr = np.zeros(q.size, dtype=bool) if judged is None else np.asarray(judged, dtype=bool)
        lat = np.full(q.size, np.nan) if latency is None else np.asarray(latency, dtype=np.float64)
        return cls(
            backends=list(backends),
            query_ids=list(query_ids),
            questions=list(questions),
            images=[None] * nq,
            image_keys=[None] * nq,
            categories=list(categories) if categories is not None else [None] * nq,
            groups=list(groups),
            correct=_fold_cells(q, c, y, judged_arr, nq, nb),
            latency=_mean_cells(q, c, lat, nq, nb),
            stats={"pair_rows": int(q.size), "sources": {}, "ignored_backends": {}, "duplicate_cells": 0, "conflicts": []},
        )

    def subset(self, index: np.ndarray | Sequence[int]) -> PairTable:
        idx = np.asarray(index, dtype=np.int64)
        pick = lambda values: [values[i] for i in idx]  # noqa: E731
        return PairTable(
            list(self.backends), pick(self.query_ids), pick(self.questions), pick(self.images),
            pick(self.image_keys), pick(self.categories), pick(self.groups),
            self.correct[idx], self.latency[idx], dict(self.stats),
            pick(self.origins) if len(self.origins) == self.n_queries else [],
        )

    def truth(self, index: np.ndarray | Sequence[int] | None = None) -> dict[str, dict[str, float]]:
        """``{query_id: {backend: correct}}`` (for the oracle)."""
        rows = range(self.n_queries) if index is None else np.asarray(index)
        return {
            self.query_ids[i]: {b: float(v) for b, v in zip(self.backends, self.correct[i], strict=True) if np.isfinite(v)}
            for i in rows
        }


class TableBuilder:
    """Accumulates validated pair rows into compact columns, then folds them into a PairTable."""

    def __init__(self, allowed_backends: Sequence[str] | None = None) -> None:
        self.allowed = None if allowed_backends is None else list(allowed_backends)
        self._qindex: dict[str, int] = {}
        self._bindex: dict[str, int] = {}
        self.query_ids: list[str] = []
        self.questions: list[str] = []
        self.images: list[str | None] = []
        self.image_keys: list[str | None] = []
        self.categories: list[str | None] = []
        self.origins: list[str] = []
        self._q = array("i")
        self._b = array("i")
        self._y = array("f")
        self._lat = array("f")
        self._judged = array("b")
        self._line = array("i")
        self._source_no = array("i")
        self.ignored: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self.conflicts: list[str] = []
        self.n_rows = 0

    def add(self, row: Mapping[str, Any], line: int = 0, source_no: int = 0, origin: str = "") -> None:
        backend = str(row["backend"])
        if self.allowed is not None and backend not in self.allowed:
            self.ignored[backend] += 1
            return
        qid = str(row["query_id"])
        q = self._qindex.get(qid)
        if q is None:
            q = self._qindex[qid] = len(self.query_ids)
            self.query_ids.append(qid)
            self.questions.append(str(row["question"]))
            self.images.append(row.get("image") or None)
            self.image_keys.append(row.get("image_sha256") or None)
            self.categories.append(normalise_category(row.get("category")))
            self.origins.append(_origin_of(row, origin))
        else:
            if self.images[q] is None and row.get("image"):
                self.images[q] = row["image"]
            if self.image_keys[q] is None and row.get("image_sha256"):
                self.image_keys[q] = row["image_sha256"]
            if self.categories[q] is None:
                self.categories[q] = normalise_category(row.get("category"))
            if len(self.conflicts) < 20 and str(row["question"]) != self.questions[q]:
                self.conflicts.append(f"query {qid!r} has two different questions; the first is used")
        b = self._bindex.get(backend)
        if b is None:
            b = self._bindex[backend] = len(self._bindex)
        source = str(row.get("source") or "benchmark")
        self._q.append(q)
        self._b.append(b)
        self._y.append(float(row["correct"]))
        latency = row.get("latency_s")
        self._lat.append(float("nan") if latency is None else float(latency))
        self._judged.append(1 if source == "judgment" else 0)
        self._line.append(int(line))
        self._source_no.append(int(source_no))
        self.sources[source] += 1
        self.n_rows += 1

    def build(self, group_of: Callable[[int], str] | None = None) -> PairTable:
        names = list(self._bindex)
        if self.allowed is not None:  # the caller's order, restricted to backends that have data
            names = [n for n in self.allowed if n in self._bindex]
        col_of = np.full(len(self._bindex), -1, dtype=np.int64)
        for col, name in enumerate(names):
            col_of[self._bindex[name]] = col
        q = np.frombuffer(self._q, dtype=np.int32).astype(np.int64)
        c = col_of[np.frombuffer(self._b, dtype=np.int32)]
        y = np.frombuffer(self._y, dtype=np.float32).astype(np.float64)
        lat = np.frombuffer(self._lat, dtype=np.float32).astype(np.float64)
        judged = np.frombuffer(self._judged, dtype=np.int8).astype(bool)
        nq, nb = len(self.query_ids), len(names)
        duplicates = _duplicate_lines(q, c, judged, np.frombuffer(self._line, dtype=np.int32), np.frombuffer(self._source_no, dtype=np.int32))
        correct = _fold_cells(q, c, y, judged, nq, nb)
        latency = _mean_cells(q, c, lat, nq, nb)
        table = PairTable(
            backends=names,
            query_ids=self.query_ids,
            questions=self.questions,
            images=self.images,
            image_keys=self.image_keys,
            categories=self.categories,
            groups=[],
            origins=self.origins,
            correct=correct,
            latency=latency,
            stats={
                "pair_rows": self.n_rows,
                "sources": dict(self.sources),
                "ignored_backends": dict(self.ignored),
                "duplicate_cells": duplicates,
                "conflicts": list(self.conflicts),
            },
        )
        table.groups = [group_of(i) if group_of else default_group(table, i) for i in range(nq)]
        return table


def _origin_of(row: Mapping[str, Any], default: str) -> str:
    """A query's origin: people's judgments, else the set a bootstrap run named, else the caller's (a file)."""
    if str(row.get("source") or "") == "judgment":
        return "judgment"
    return str(row.get("dataset") or default or "pairs")


def _cell_index(q: np.ndarray, c: np.ndarray, nb: int) -> np.ndarray:
    return q * nb + c


def _fold_cells(q: np.ndarray, c: np.ndarray, y: np.ndarray, judged: np.ndarray, nq: int, nb: int) -> np.ndarray:
    """Mean of judgments where a cell has any, else mean of benchmark rows; NaN where none."""
    size = nq * nb
    cell = _cell_index(q, c, nb)
    out = np.full(size, np.nan)
    for rows in (~judged, judged):  # judgments last, so they overwrite
        n = np.bincount(cell[rows], minlength=size)
        s = np.bincount(cell[rows], weights=y[rows], minlength=size)
        has = n > 0
        out[has] = s[has] / n[has]
    return out.reshape(nq, nb).astype(np.float32)


def _mean_cells(q: np.ndarray, c: np.ndarray, v: np.ndarray, nq: int, nb: int) -> np.ndarray:
    size = nq * nb
    cell = _cell_index(q, c, nb)
    ok = np.isfinite(v)
    n = np.bincount(cell[ok], minlength=size)
    s = np.bincount(cell[ok], weights=v[ok], minlength=size)
    out = np.full(size, np.nan)
    out[n > 0] = s[n > 0] / n[n > 0]
    return out.reshape(nq, nb).astype(np.float32)


def _duplicate_lines(q: np.ndarray, c: np.ndarray, judged: np.ndarray, line: np.ndarray, source_no: np.ndarray) -> int:
    """How many rows repeat a (query, backend, source) already seen within the same input."""
    if q.size == 0:
        return 0
    key = ((q * 4096 + c) * 2 + judged) * 64 + source_no
    _, counts = np.unique(key, return_counts=True)
    return int((counts - 1).sum())


def default_group(table: PairTable, i: int) -> str:
    """The split key of query ``i``: its image's sha256, the image file's hash, or its query id."""
    if table.image_keys[i]:
        return "sha256:" + str(table.image_keys[i]).lower()
    path = table.images[i]
    if path:
        try:
            return "sha256:" + image_key(path)
        except (OSError, ValueError):  # missing or unreadable: ImageError is a ValueError
            return "path:" + str(path)
    return "query:" + table.query_ids[i]


def build_table(
    *,
    pairs: Sequence[str | Path] = (),
    store: Any | None = None,
    backends: Sequence[str] | None = None,
    strict: bool = True,
) -> tuple[PairTable, list[str]]:
    """A query table from pairs files and/or a Store's performance pairs, plus warnings to show.

    ``backends``: names the router may choose from; rows for other backends are ignored with a
    warning. ``strict``: any bad line aborts with every line number listed (no training on half a
    file); otherwise bad lines are skipped with a warning.
    """
    builder = TableBuilder(backends)
    warnings: list[str] = []
    for source_no, path in enumerate(pairs):
        errors: list[tuple[int, str]] = []
        if not Path(path).is_file():
            raise RouterError(f"pairs file not found: {path}")
        for line, row in iter_pairs_file(path, errors):
            builder.add(row, line, source_no, origin=Path(path).name)
        if errors:
            message = format_line_errors(str(path), errors)
            if strict:
                raise RouterError(message + "\n(fix these lines, or pass --lenient to skip them)")
            warnings.append(message + "\n(these lines were skipped)")
    if store is not None:
        bad: list[tuple[int, str]] = []
        for number, row in enumerate(store.performance_pairs(), start=1):
            try:
                clean = validate_pair(dict(row), base_dir=Path.cwd())
            except ValueError as exc:
                bad.append((number, str(exc)))
                continue
            builder.add(clean, number, len(pairs), origin="store")
        if bad:
            warnings.append(format_line_errors("store performance pairs (row numbers)", bad) + "\n(these rows were skipped)")
    # Group keys: hash each image file once even when many queries share it.
    file_hashes: dict[str, str] = {}

    def group_of(i: int) -> str:
        if builder.image_keys[i]:
            return "sha256:" + str(builder.image_keys[i]).lower()
        path = builder.images[i]
        if path:
            if path not in file_hashes:
                try:
                    file_hashes[path] = "sha256:" + image_key(path)
                except (OSError, ValueError):  # missing or unreadable: ImageError is a ValueError
                    file_hashes[path] = "path:" + str(path)
            return file_hashes[path]
        return "query:" + builder.query_ids[i]

    table = builder.build(group_of=group_of)
    if builder.ignored:
        listed = ", ".join(f"{name} ({n} rows)" for name, n in sorted(builder.ignored.items()))
        warnings.append(f"backends in the data but not in the backend list were ignored: {listed}")
    if table.stats["duplicate_cells"]:
        warnings.append(f"{table.stats['duplicate_cells']} repeated (query, backend, source) rows were averaged")
    warnings.extend(table.stats["conflicts"])
    if backends is not None:
        absent = [b for b in backends if b not in table.backends]
        if absent:
            warnings.append(f"backend(s) with no pairs in the data, which this router will not choose: {', '.join(absent)}")
    return table, warnings


# ============================================================================ splits
def group_bucket(group: str, salt: str = SPLIT_SALT) -> float:
    digest = hashlib.blake2b(f"{salt}\x00{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def split_folds(
    groups: Sequence[str],
    *,
    heldout_fraction: float = 0.2,
    calib_fraction: float = 0.15,
    salt: str = SPLIT_SALT,
) -> tuple[np.ndarray, str]:
    """Fold per query (0 train, 1 calibration, 2 held-out), the same for every query of a group.

    Hash buckets give a split that is stable across datasets; with few groups a fold can come out
    empty, and then groups are assigned by their rank of the same hash (still one fold per group).
    """
    unique, inverse = np.unique(np.asarray(groups, dtype=object), return_inverse=True)
    buckets = np.array([group_bucket(str(g), salt) for g in unique])
    fold = np.where(buckets < heldout_fraction, FOLD_HELDOUT, np.where(buckets < heldout_fraction + calib_fraction, FOLD_CALIB, FOLD_TRAIN))
    method = "hash"
    if len(unique) >= 3 and any((fold == f).sum() == 0 for f in (FOLD_TRAIN, FOLD_CALIB, FOLD_HELDOUT)):
        rank = np.argsort(np.argsort(buckets)) / len(unique)
        fold = np.where(rank < heldout_fraction, FOLD_HELDOUT, np.where(rank < heldout_fraction + calib_fraction, FOLD_CALIB, FOLD_TRAIN))
        method = "hash-rank"
    return fold[inverse].astype(np.int8), method


def heldout_mask(groups: Sequence[str], split: Mapping[str, Any]) -> np.ndarray:
    """Which queries fall in a card's held-out fold (hash method: exact for any data set)."""
    buckets = np.array([group_bucket(str(g), split.get("salt", SPLIT_SALT)) for g in groups])
    return buckets < float(split.get("heldout_fraction", 0.2))


__all__ = [
    "FOLD_CALIB",
    "FOLD_HELDOUT",
    "FOLD_TRAIN",
    "PairTable",
    "SPLIT_SALT",
    "TableBuilder",
    "build_table",
    "default_group",
    "group_bucket",
    "heldout_mask",
    "split_folds",
]
