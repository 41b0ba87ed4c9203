"""Training: performance pairs -> a query table -> features -> heads -> calibration -> a router + card.

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
import json
import math
import os
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from router.base import BackendChoice, RouterError
from router.calibration import Calibrator, expected_calibration_error, fit_calibrator, log_loss
from router.categories import CATEGORIES, normalise_category
from router.features import (
    FeatureConfig,
    FeatureExtractor,
    ImageEmbedder,
    ImageFeatures,
    MiniLMTextEncoder,
    TextEncoder,
    sha256_file,
)

#: Salt of the image split; changing it moves images between folds (and breaks comparisons).
SPLIT_SALT = "routelens-split-v1"
REQUIRED_FIELDS: tuple[str, ...] = ("query_id", "question", "backend", "correct")
FOLD_TRAIN, FOLD_CALIB, FOLD_HELDOUT = 0, 1, 2


# ============================================================================ reading pairs
def _validate_row_fallback(row: Any, base_dir: Path) -> dict[str, Any]:
    """Minimal validation used only when ``data.pairs`` is not importable."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED_FIELDS if row.get(k) in (None, "")]
    if missing:
        raise ValueError(f"missing required field(s): {', '.join(missing)}")
    out = dict(row)
    out["query_id"] = str(row["query_id"])
    try:
        correct = float(row["correct"])
    except (TypeError, ValueError):
        raise ValueError(f"'correct' must be a number in [0, 1], got {row['correct']!r}") from None
    if not 0.0 <= correct <= 1.0 or math.isnan(correct):
        raise ValueError(f"'correct' must be in [0, 1], got {row['correct']!r}")
    out["correct"] = correct
    if row.get("image"):
        out["image"] = os.path.normpath(os.path.join(base_dir, str(row["image"])))
    out.setdefault("source", "benchmark")
    return out


def _validator() -> Callable[[Any, Path], dict[str, Any]]:
    """``data.pairs.validate_pair`` when the data package is present (one definition of the format)."""
    try:
        from data.pairs import validate_pair
    except ImportError:
        return _validate_row_fallback
    return lambda row, base_dir: validate_pair(row, base_dir=base_dir)


def iter_pairs_file(path: str | Path, errors: list[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Validated rows of a pairs JSONL file with their line numbers, streamed (no list of dicts).

    Bad lines are appended to ``errors`` as (line number, message) and skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise RouterError(f"pairs file not found: {path}")
    validate = _validator()
    base_dir = path.absolute().parent
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                errors.append((number, f"not valid UTF-8 ({exc.reason})"))
                continue
            if number == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                row = json.loads(text)
                yield number, validate(row, base_dir)
            except (ValueError, RecursionError) as exc:
                errors.append((number, f"not valid JSON: {exc}" if isinstance(exc, json.JSONDecodeError) else str(exc)))


def format_line_errors(source: str, errors: Sequence[tuple[int, str]], limit: int = 10) -> str:
    shown = "\n".join(f"  line {n}: {m}" for n, m in errors[:limit])
    more = f"\n  ... and {len(errors) - limit} more" if len(errors) > limit else ""
    return f"{source}: {len(errors)} bad line(s):\n{shown}{more}"


# ============================================================================ the query table
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

    @property
    def n_queries(self) -> int:
        return len(self.query_ids)

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
    ) -> "PairTable":
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

    def subset(self, index: np.ndarray | Sequence[int]) -> "PairTable":
        idx = np.asarray(index, dtype=np.int64)
        pick = lambda values: [values[i] for i in idx]  # noqa: E731
        return PairTable(
            list(self.backends), pick(self.query_ids), pick(self.questions), pick(self.images),
            pick(self.image_keys), pick(self.categories), pick(self.groups),
            self.correct[idx], self.latency[idx], dict(self.stats),
        )

    def truth(self, index: np.ndarray | Sequence[int] | None = None) -> dict[str, dict[str, float]]:
        """``{query_id: {backend: correct}}`` (for the oracle)."""
        rows = range(self.n_queries) if index is None else np.asarray(index)
        return {
            self.query_ids[i]: {b: float(v) for b, v in zip(self.backends, self.correct[i]) if np.isfinite(v)}
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

    def add(self, row: Mapping[str, Any], line: int = 0, source_no: int = 0) -> None:
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
            return "sha256:" + sha256_file(path)
        except OSError:
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
        for line, row in iter_pairs_file(path, errors):
            builder.add(row, line, source_no)
        if errors:
            message = format_line_errors(str(path), errors)
            if strict:
                raise RouterError(message + "\n(fix these lines, or pass --lenient to skip them)")
            warnings.append(message + "\n(these lines were skipped)")
    if store is not None:
        validate = _validator()
        bad: list[tuple[int, str]] = []
        for number, row in enumerate(store.performance_pairs(), start=1):
            try:
                clean = validate(dict(row), Path.cwd())
            except ValueError as exc:
                bad.append((number, str(exc)))
                continue
            builder.add(clean, number, len(pairs))
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
                    file_hashes[path] = "sha256:" + sha256_file(path)
                except OSError:
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
    digest = hashlib.blake2b(f"{salt}\x00{group}".encode("utf-8"), digest_size=8).digest()
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


# ============================================================================ heads
@dataclass
class TrainConfig:
    """Knobs of one training run; saved in the card."""

    kind: str = "embedding"
    hidden: int = 128
    dropout: float = 0.0
    lr: float = 3e-3
    weight_decay: float = 1e-4
    category_weight: float = 0.3
    batch_size: int | None = None  # None: from the data size
    max_epochs: int | None = None  # None: from the data size and max_steps
    max_steps: int = 3000
    patience: int = 8
    #: Epoch selection: "calibrated" (log-loss after a Platt fit on the calibration fold) or "raw".
    early_stop: str = "calibrated"
    heldout_fraction: float = 0.2
    calib_fraction: float = 0.15
    calibration: str = "auto"
    split_salt: str = SPLIT_SALT
    seed: int = 0
    min_queries: int = 40
    min_groups: int = 10
    lambda_cost: float = 0.0
    timing_sample: int = 30
    #: Cross-fit the calibrator (K folds) when train + calibration hold at most this many queries.
    cross_fit_folds: int = 5
    cross_fit_max_queries: int = 50_000
    threads: int | None = None  # torch intra-op threads during training; None leaves torch's default

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    heads: "Any"  # router.embedding_router.HeadWeights
    epochs: int
    steps: int
    best_calib_loss: float
    seconds: float


def fit_heads(
    features: np.ndarray,
    correct: np.ndarray,
    categories: np.ndarray,
    train_idx: np.ndarray,
    calib_idx: np.ndarray,
    config: TrainConfig,
) -> FitResult:
    """Train the backend + category heads with torch; early-stop on the calibration fold's loss.

    ``correct`` is (n, b) with NaN for missing cells (masked out of the loss); ``categories`` is (n,)
    with -1 where unknown. Batches are gathered from ``features`` by index, so no copy of the
    training matrix is made. Torch's global RNG is forked, so training leaves it as it was.
    """
    import torch

    from router.embedding_router import HeadWeights

    start = time.perf_counter()
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return _fit_heads_torch(features, correct, categories, train_idx, calib_idx, config, start, HeadWeights)
    finally:
        if config.threads:
            torch.set_num_threads(old_threads)


def _fit_heads_torch(features, correct, categories, train_idx, calib_idx, config, start, HeadWeights) -> FitResult:  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    x_all = torch.from_numpy(np.ascontiguousarray(features))
    n_backends = correct.shape[1]
    has_cat = int((categories[train_idx] >= 0).sum()) >= 10
    n_cat = len(CATEGORIES) if has_cat else 0
    y_all = torch.from_numpy(np.nan_to_num(correct, nan=0.0).astype(np.float32))
    m_all = torch.from_numpy(np.isfinite(correct).astype(np.float32))
    c_all = torch.from_numpy(categories.astype(np.int64))

    # Standardisation statistics from (a sample of) the training rows.
    sample = train_idx if train_idx.size <= 100_000 else np.random.default_rng(config.seed).choice(train_idx, 100_000, replace=False)
    xs = features[np.sort(sample)].astype(np.float64)
    mean = xs.mean(axis=0).astype(np.float32)
    std = xs.std(axis=0)
    scale = (1.0 / np.where(std > 1e-6, std, 1.0)).astype(np.float32)
    del xs
    mean_t, scale_t = torch.from_numpy(mean), torch.from_numpy(scale)

    d = features.shape[1]
    width = config.hidden if config.hidden > 0 else d
    trunk: nn.Module = (
        nn.Sequential(nn.Linear(d, config.hidden), nn.ReLU(), nn.Dropout(config.dropout)) if config.hidden > 0 else nn.Dropout(config.dropout)
    )
    out = nn.Linear(width, n_backends + n_cat)
    params = list(trunk.parameters()) + list(out.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    ce = nn.CrossEntropyLoss(ignore_index=-1, reduction="sum")

    n_train = int(train_idx.size)
    batch = config.batch_size or int(np.clip(n_train // 16, 32, 2048))
    steps_per_epoch = max(1, math.ceil(n_train / batch))
    max_epochs = config.max_epochs or int(np.clip(math.ceil(config.max_steps / steps_per_epoch), 3, 400))

    def loss_on(idx: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x_all.index_select(0, idx).float() - mean_t) * scale_t
        logits = out(trunk(x))
        mask = m_all.index_select(0, idx)
        backend_loss = (bce(logits[:, :n_backends], y_all.index_select(0, idx)) * mask).sum() / mask.sum().clamp(min=1.0)
        if n_cat:
            cats = c_all.index_select(0, idx)
            known = (cats >= 0).sum().clamp(min=1)
            cat_loss = ce(logits[:, n_backends:], cats) / known
        else:
            cat_loss = torch.zeros(())
        return backend_loss, cat_loss

    calib_sample = calib_idx if calib_idx.size <= 50_000 else np.sort(np.random.default_rng(config.seed + 1).choice(calib_idx, 50_000, replace=False))
    calib_y = correct[calib_sample]

    def calib_loss() -> float:
        """Log-loss on the calibration fold *after* a per-backend Platt fit.

        Selecting the epoch by the raw loss stops as soon as the heads get over-confident, long before
        they have separated the tasks; over-confidence is what the calibrator removes anyway, so the
        epoch is chosen by what the router will actually output.
        """
        trunk.eval()
        out.eval()
        chunks = []
        with torch.no_grad():
            for s in range(0, calib_sample.size, 8192):
                idx = torch.from_numpy(calib_sample[s : s + 8192])
                x = (x_all.index_select(0, idx).float() - mean_t) * scale_t
                chunks.append(out(trunk(x))[:, :n_backends].numpy().astype(np.float64))
        trunk.train()
        out.train()
        logits = np.concatenate(chunks)
        if config.early_stop == "raw":
            return log_loss(1.0 / (1.0 + np.exp(-logits)), calib_y)
        return log_loss(fit_calibrator("platt", logits, calib_y).transform(logits), calib_y)

    def snapshot() -> list[torch.Tensor]:
        return [p.detach().clone() for p in params]

    rng = np.random.default_rng(config.seed)
    best_loss, best_state, best_epoch, stale, steps, epoch = float("inf"), snapshot(), 0, 0, 0, 0
    for epoch in range(1, max_epochs + 1):
        order = train_idx[rng.permutation(n_train)]
        for s in range(0, n_train, batch):
            idx = torch.from_numpy(order[s : s + batch])
            backend_loss, cat_loss = loss_on(idx, True)
            loss = backend_loss + config.category_weight * cat_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        if not calib_idx.size:  # fixed-length run (cross-fitting): keep the last state
            best_loss, best_epoch = float(backend_loss.detach()), epoch
            continue
        current = calib_loss()
        if current < best_loss - 1e-5:
            best_loss, best_state, best_epoch, stale = current, snapshot(), epoch, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    if calib_idx.size:
        with torch.no_grad():
            for p, saved in zip(params, best_state):
                p.copy_(saved)
    linear_w = out.weight.detach().numpy().T.copy()
    linear_b = out.bias.detach().numpy().copy()
    hidden_w = hidden_b = None
    if config.hidden > 0:
        first = trunk[0]  # type: ignore[index]
        hidden_w = first.weight.detach().numpy().T.copy()
        hidden_b = first.bias.detach().numpy().copy()
    heads = HeadWeights(
        mean=mean,
        scale=scale,
        hidden_w=hidden_w,
        hidden_b=hidden_b,
        backend_w=linear_w[:, :n_backends],
        backend_b=linear_b[:n_backends],
        category_w=linear_w[:, n_backends:] if n_cat else None,
        category_b=linear_b[n_backends:] if n_cat else None,
    )
    return FitResult(heads, best_epoch, steps, best_loss, time.perf_counter() - start)


def _out_of_fold_logits(
    features: np.ndarray,
    correct: np.ndarray,
    categories: np.ndarray,
    pool: np.ndarray,
    groups: Sequence[str],
    epochs: int,
    config: TrainConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Backend logits for every ``pool`` row from heads that did not see its image (K folds)."""
    k = int(config.cross_fit_folds)
    fold = np.array([int(group_bucket(groups[i], config.split_salt + ":cross-fit") * k) for i in pool])
    fixed = TrainConfig(**{**config.to_json(), "max_epochs": max(int(epochs), 1)})
    rows, logits = [], []
    for f in range(k):
        held = pool[fold == f]
        rest = pool[fold != f]
        if held.size == 0 or rest.size == 0:
            continue
        heads = fit_heads(features, correct, categories, rest, np.array([], dtype=np.int64), fixed).heads
        rows.append(held)
        logits.append(heads.forward(features[held])[0])
    return np.concatenate(rows), np.concatenate(logits)


# ============================================================================ features
def build_extractor(
    *,
    kind: str,
    text_encoder: TextEncoder | None,
    image_embedder: ImageEmbedder | None,
    image_embedder_name: str | None,
    image_dim: int,
    text_only: bool,
    llm_loader: Callable[[], tuple[Any, Any]] | None = None,
    llm_model_dir: str | Path | None = None,
) -> FeatureExtractor:
    if text_encoder is None:
        if kind == "llm":
            from router.llm_router import LLMTextEncoder

            text_encoder = LLMTextEncoder(llm_model_dir, llm_loader)
        else:
            text_encoder = MiniLMTextEncoder()
    config = FeatureConfig(
        text_encoder=text_encoder.config(),
        text_dim=text_encoder.dim,
        image_embedder=None if text_only else (image_embedder_name or "custom"),
        image_dim=0 if text_only else image_dim,
        text_only=text_only,
    )
    image_features = None if text_only or image_embedder is None else ImageFeatures(image_embedder, name=config.image_embedder or "custom")
    return FeatureExtractor(config, text_encoder, image_features)


def compute_features(table: PairTable, extractor: FeatureExtractor, image_vectors: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """(n_queries, dim) features; each distinct question is encoded once, each image embedded once."""
    unique_q: dict[str, int] = {}
    q_index = np.empty(table.n_queries, dtype=np.int64)
    for i, q in enumerate(table.questions):
        q_index[i] = unique_q.setdefault(q, len(unique_q))
    texts = list(unique_q)
    text_vecs = np.zeros((len(texts), extractor.config.text_dim), dtype=np.float32)
    for s in range(0, len(texts), 1024):
        text_vecs[s : s + 1024] = extractor.text_encoder.encode(texts[s : s + 1024])
    if extractor.config.text_only:
        return text_vecs[q_index]
    feats = np.zeros((table.n_queries, extractor.config.dim), dtype=np.float32)
    feats[:, : extractor.config.text_dim] = text_vecs[q_index]
    vectors = image_vectors or {}
    for i in range(table.n_queries):
        vec = vectors.get(table.groups[i])
        if vec is not None:
            feats[i, extractor.config.text_dim : extractor.config.text_dim + extractor.config.image_dim] = vec
            feats[i, -1] = 1.0
    return feats


def embed_table_images(table: PairTable, embedder: ImageEmbedder | None, name: str = "custom") -> tuple[dict[str, np.ndarray], list[str]]:
    """Image vectors keyed by split group (= content hash), each image embedded once; plus warnings."""
    if embedder is None:
        return {}, []
    features = ImageFeatures(embedder, name=name, cache_size=0)
    vectors: dict[str, np.ndarray] = {}
    failed: list[str] = []
    seen: set[str] = set()
    for i, path in enumerate(table.images):
        group = table.groups[i]
        if not path or group in seen:
            continue
        seen.add(group)
        try:
            vectors[group] = features.embed(path, key=group)
        except Exception as exc:  # noqa: BLE001 - one unreadable image must not stop training
            if len(failed) < 5:
                failed.append(f"{path}: {exc.__class__.__name__}: {exc}")
    warnings = [f"{len(seen) - len(vectors)} image(s) could not be embedded and count as missing, e.g. {failed}"] if failed else []
    return vectors, warnings


# ============================================================================ training a router
@dataclass
class TrainResult:
    router: Any  # EmbeddingRouter | LLMRouter
    card: dict[str, Any]
    table: PairTable
    folds: np.ndarray
    features: np.ndarray
    warnings: list[str]

    @property
    def heldout_index(self) -> np.ndarray:
        return np.flatnonzero(self.folds == FOLD_HELDOUT)


def priors_from(table: PairTable, index: np.ndarray) -> "Any":
    from router.baselines import Priors

    y = table.correct[index]
    accuracy = {b: float(np.nanmean(y[:, j])) for j, b in enumerate(table.backends) if np.isfinite(y[:, j]).any()}
    by_cat: dict[str, dict[str, float]] = {}
    cats = np.array([table.categories[i] or "" for i in index], dtype=object)
    for cat in CATEGORIES:
        rows = cats == cat
        if rows.sum() >= 3:
            by_cat[cat] = {b: float(np.nanmean(y[rows, j])) for j, b in enumerate(table.backends) if np.isfinite(y[rows, j]).any()}
    return Priors(accuracy, by_cat)


def check_enough(table: PairTable, config: TrainConfig) -> None:
    """Refuse to train on too little data, saying how much is needed."""
    if len(table.backends) < 2:
        raise RouterError(
            f"need pairs for at least 2 backends to learn a routing; got {len(table.backends)} "
            f"({', '.join(table.backends) or 'none'})"
        )
    usable = int((np.isfinite(table.correct).sum(axis=1) >= 2).sum())
    groups = len(set(table.groups))
    if usable < config.min_queries:
        raise RouterError(
            f"too few judged queries to train: {usable} queries have results for 2 or more backends; "
            f"at least {config.min_queries} are needed (about {config.min_queries * len(table.backends)} pair rows "
            f"with {len(table.backends)} backends)"
        )
    if groups < config.min_groups:
        raise RouterError(
            f"too few distinct images to split by image: {groups}; at least {config.min_groups} are needed"
        )


def new_version_id(kind: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{kind}-{stamp}-{os.urandom(3).hex()}"


def train_router(
    table: PairTable,
    backends: Sequence[BackendChoice],
    *,
    config: TrainConfig | None = None,
    text_encoder: TextEncoder | None = None,
    image_embedder: ImageEmbedder | None = None,
    image_embedder_name: str | None = None,
    features: np.ndarray | None = None,
    llm_loader: Callable[[], tuple[Any, Any]] | None = None,
    llm_model_dir: str | Path | None = None,
    version: str | None = None,
    warnings: Sequence[str] = (),
) -> TrainResult:
    """Train one router version on ``table`` (held-out metrics in its card); nothing is saved here.

    ``features``: precomputed (n_queries, d) vectors (the synthetic benchmark passes random ones);
    the card then says so. ``backends`` gives kinds and costs; only those with data are used.
    """
    from router.embedding_router import EmbeddingRouter
    from router.evaluation import evaluate
    from router.llm_router import LLMRouter

    config = config or TrainConfig()
    warnings = list(warnings)
    if config.kind not in ("embedding", "llm"):
        raise RouterError(f"unknown router kind {config.kind!r}; valid: embedding, llm")
    by_name = {b.name: b for b in backends}
    chosen = [by_name[n] for n in table.backends if n in by_name]
    if len(chosen) < len(table.backends):
        keep = [j for j, n in enumerate(table.backends) if n in by_name]
        table = PairTable(
            [table.backends[j] for j in keep], table.query_ids, table.questions, table.images, table.image_keys,
            table.categories, table.groups, table.correct[:, keep], table.latency[:, keep], table.stats,
        )
    check_enough(table, config)
    t0 = time.perf_counter()
    folds, split_method = split_folds(
        table.groups, heldout_fraction=config.heldout_fraction, calib_fraction=config.calib_fraction, salt=config.split_salt
    )
    train_idx = np.flatnonzero(folds == FOLD_TRAIN)
    calib_idx = np.flatnonzero(folds == FOLD_CALIB)
    held_idx = np.flatnonzero(folds == FOLD_HELDOUT)
    if train_idx.size == 0 or held_idx.size == 0:
        raise RouterError("the image split left no training or no held-out queries; add more images")

    # --- features
    n_with_image = sum(1 for p in table.images if p)
    image_vectors: dict[str, np.ndarray] = {}
    if features is None and image_embedder is not None and n_with_image:
        image_vectors, image_warnings = embed_table_images(table, image_embedder, image_embedder_name or "custom")
        warnings.extend(image_warnings)
    text_only = not image_vectors
    if image_embedder is not None and text_only and features is None:
        warnings.append("no image could be embedded (no image paths at hand), so this router uses the question text only")
    image_dim = int(next(iter(image_vectors.values())).size) if image_vectors else 0
    extractor = build_extractor(
        kind=config.kind,
        text_encoder=text_encoder,
        image_embedder=image_embedder,
        image_embedder_name=image_embedder_name,
        image_dim=image_dim,
        text_only=text_only,
        llm_loader=llm_loader,
        llm_model_dir=llm_model_dir,
    )
    feature_source = "computed"
    if features is None:
        features = compute_features(table, extractor, image_vectors)
    else:
        feature_source = "precomputed by the caller (not from the encoder)"
        if features.shape != (table.n_queries, extractor.config.dim):
            raise RouterError(f"precomputed features have shape {features.shape}; expected ({table.n_queries}, {extractor.config.dim})")
    t_features = time.perf_counter() - t0

    # --- heads and calibration
    cat_codes = np.array([CATEGORIES.index(c) if c in CATEGORIES else -1 for c in table.categories], dtype=np.int64)
    correct = table.correct.astype(np.float32)
    fit = fit_heads(features, correct, cat_codes, train_idx, calib_idx, config)
    pool = np.concatenate([train_idx, calib_idx])
    cross_fit = bool(config.cross_fit_folds) and calib_idx.size > 0 and pool.size <= config.cross_fit_max_queries
    if cross_fit:
        # Small data: a calibration fold of a few hundred queries gives a noisy calibrator, so fit it
        # on out-of-fold logits over train + calibration (K image-grouped folds, the epoch count the
        # early-stopped fit chose), and refit the heads on all of train + calibration the same way.
        calib_rows, calib_logits = _out_of_fold_logits(features, correct, cat_codes, pool, table.groups, fit.epochs, config)
        fixed = TrainConfig(**{**config.to_json(), "max_epochs": max(fit.epochs, 1)})
        fit = FitResult(
            fit_heads(features, correct, cat_codes, pool, np.array([], dtype=np.int64), fixed).heads,
            fit.epochs, fit.steps, fit.best_calib_loss, fit.seconds,
        )
    else:
        calib_rows = calib_idx if calib_idx.size else train_idx
        calib_logits = fit.heads.forward(features[calib_rows])[0]
    calibrator = fit_calibrator(config.calibration, calib_logits, correct[calib_rows], seed=config.seed)
    ece_before = expected_calibration_error(Calibrator.identity(len(chosen)).transform(calib_logits), correct[calib_rows])

    priors = priors_from(table, np.concatenate([train_idx, calib_idx]))
    best_single = max(priors.accuracy, key=priors.accuracy.get) if priors.accuracy else chosen[0].name
    version = version or new_version_id(config.kind)
    cls = LLMRouter if config.kind == "llm" else EmbeddingRouter
    router = cls(
        chosen,
        extractor=extractor,
        heads=fit.heads,
        calibrator=calibrator,
        version=version,
        lambda_cost=config.lambda_cost,
        fallback_backend=best_single,
    )
    router.card = {
        "format": 1,
        "version": version,
        "kind": config.kind,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backends": [b.to_json() for b in chosen],
        "feature_config": extractor.config.to_json(),
        "text_only": extractor.config.text_only,
        "features": feature_source,
        "categories": list(CATEGORIES),
        "category_head": fit.heads.category_w is not None,
        "fallback_backend": best_single,
        "lambda_cost": config.lambda_cost,
        "priors": priors.to_json(),
        "data": {
            "pair_rows": int(table.stats.get("pair_rows", int(np.isfinite(table.correct).sum()))),
            "labelled_cells": int(np.isfinite(table.correct).sum()),
            "queries": table.n_queries,
            "distinct_questions": len(set(table.questions)),
            "images": int(n_with_image),
            "groups": len(set(table.groups)),
            "queries_with_category": int((cat_codes >= 0).sum()),
            "train_queries": int(train_idx.size),
            "calibration_queries": int(calib_idx.size),
            "heldout_queries": int(held_idx.size),
            "sources": table.stats.get("sources", {}),
            "ignored_backends": table.stats.get("ignored_backends", {}),
        },
        "split": {
            "by": "image (image_sha256, else the image file's sha256, else query_id)",
            "method": split_method,
            "salt": config.split_salt,
            "heldout_fraction": config.heldout_fraction,
            "calib_fraction": config.calib_fraction,
        },
        "training": {
            **config.to_json(),
            "epochs_run": fit.epochs,
            "steps": fit.steps,
            "best_calibration_loss": round(fit.best_calib_loss, 6),
            "feature_seconds": round(t_features, 3),
            "fit_seconds": round(fit.seconds, 3),
        },
        "calibration": {
            "method": calibrator.method,
            "fitted_on": f"out-of-fold logits, {config.cross_fit_folds} image-grouped folds over train + calibration" if cross_fit else "the calibration fold",
            "calibration_fold_ece_before": round(float(ece_before), 6),
            "calibration_fold_ece_after": round(float(expected_calibration_error(calibrator.transform(calib_logits), correct[calib_rows])), 6),
        },
        "warnings": warnings,
    }
    report = evaluate(
        router,
        table,
        held_idx,
        features=features[held_idx],
        timing_sample=config.timing_sample if feature_source == "computed" else 0,
    )
    router.card["metrics"] = report
    router.card["training"]["total_seconds"] = round(time.perf_counter() - t0, 3)
    return TrainResult(router, router.card, table, folds, features, warnings)


# ============================================================================ the whole cycle
_VLM_HINTS = ("clip", "siglip", "efficientnet", "vit", "resnet", "convnext", "dino")


def infer_backends(table: PairTable) -> tuple[list[BackendChoice], str]:
    """Backend choices guessed from the data when no list is given, and a warning saying so.

    Kind: ``vlm`` when the name looks like a vision encoder, else ``vlm+llm``; cost: the mean latency.
    """
    out = []
    for j, name in enumerate(table.backends):
        kind = "vlm" if any(h in name.lower() for h in _VLM_HINTS) else "vlm+llm"
        lat = table.latency[:, j]
        cost = float(np.nanmean(lat)) if np.isfinite(lat).any() else 0.0
        out.append(BackendChoice(name, kind, round(cost, 6)))
    guessed = ", ".join(f"{b.name}={b.kind} (cost {b.cost:g}s)" for b in out)
    return out, f"no backend list given: kinds guessed from names and costs from mean latency: {guessed}"


@dataclass
class TrainOutcome:
    version: str
    path: Path
    promoted: bool
    reason: str
    card: dict[str, Any]
    warnings: list[str]
    #: The active version's metrics on the same held-out rows (None when there was no active version).
    active_metrics: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        metrics = self.card.get("metrics", {})
        return {
            "version": self.version,
            "path": str(self.path),
            "promoted": self.promoted,
            "reason": self.reason,
            "text_only": self.card.get("text_only"),
            "data": self.card.get("data"),
            "metrics": {k: metrics.get(k) for k in (
                "routed_accuracy", "best_single_accuracy", "oracle_accuracy", "random_accuracy",
                "category_rule_accuracy", "selection_accuracy", "ece", "mean_cost", "decision_ms_p50",
            )},
            "warnings": self.warnings,
        }


def train_version(
    *,
    out_dir: str | Path,
    pairs: Sequence[str | Path] = (),
    store: Any | None = None,
    backends: Sequence[BackendChoice] | None = None,
    config: TrainConfig | None = None,
    force: bool = False,
    strict: bool = True,
    text_encoder: TextEncoder | None = None,
    image_embedder: ImageEmbedder | None = None,
    image_embedder_name: str | None = None,
    llm_loader: Callable[[], tuple[Any, Any]] | None = None,
    llm_model_dir: str | Path | None = None,
) -> TrainOutcome:
    """Pairs files and/or a Store -> a trained, saved version, promoted if it beats the active one.

    ``out_dir`` is the versions folder (``<out_dir>/<version>/`` plus ``versions.json``); with a
    ``store`` the version is also recorded in its ``router_versions`` table.
    """
    from router.versions import VersionRegistry, register_and_promote

    if not pairs and store is None:
        raise RouterError("nothing to train on: give a pairs file, a store, or both")
    config = config or TrainConfig()
    table, warnings = build_table(pairs=pairs, store=store, backends=None if backends is None else [b.name for b in backends], strict=strict)
    if backends is None:
        backends, guess = infer_backends(table)
        warnings.append(guess)
    result = train_router(
        table,
        backends,
        config=config,
        text_encoder=text_encoder,
        image_embedder=image_embedder,
        image_embedder_name=image_embedder_name,
        llm_loader=llm_loader,
        llm_model_dir=llm_model_dir,
        warnings=warnings,
    )
    registry = VersionRegistry(out_dir, store)
    load_kwargs = {"text_encoder": result.router.extractor.text_encoder, "image_embedder": image_embedder,
                   "llm_loader": llm_loader, "llm_model_dir": llm_model_dir}
    promotion = register_and_promote(registry, result, out_dir, force=force, load_kwargs=load_kwargs)
    return TrainOutcome(
        promotion.version, promotion.path, promotion.promoted, promotion.reason, result.card, result.warnings,
        promotion.active_metrics,
    )


__all__ = [
    "FOLD_CALIB",
    "FOLD_HELDOUT",
    "FOLD_TRAIN",
    "PairTable",
    "SPLIT_SALT",
    "TableBuilder",
    "TrainConfig",
    "TrainOutcome",
    "TrainResult",
    "build_table",
    "check_enough",
    "compute_features",
    "fit_heads",
    "format_line_errors",
    "group_bucket",
    "heldout_mask",
    "infer_backends",
    "iter_pairs_file",
    "new_version_id",
    "priors_from",
    "split_folds",
    "train_router",
    "train_version",
]
